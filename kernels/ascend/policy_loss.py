"""The policy-loss op (``kernels/policy_loss.py``) on Ascend: the Triton kernel of
``kernels/triton/policy_loss.py`` as it is, with no settings of its own.

That kernel already fits Ascend's limits: each program keeps its sums in registers and writes one
row of partial sums that the host adds up (the vector cores have no 64-bit atomics), and its grid
is capped by the tiles' ``max_programs``, which ``AscendTiles`` sets to the vector-core count (at
most 65535 programs). Its ``loss_terms`` falls back to the PyTorch tiles like every other tile
operation (``ascend/__init__.py``).
"""

from __future__ import annotations
