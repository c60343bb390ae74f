"""The log-probs op (``kernels/logprobs.py``) on Ascend: the Triton kernels of
``kernels/triton/logprobs.py`` with tile sizes for the 910B's vector cores.

Those kernels already pick the target logit with ``tl.where`` (triton-ascend turns gathers into
scalar loops) and loop over rows with a grid stride (so the grid can be the vector-core count).
What Ascend changes is the vocabulary tile:

* ``BLOCK_V = 2048``: the row kernels keep about six fp32 vectors of ``BLOCK_V`` live (logits,
  exponentials, column ids, masks, products), 48 KB, leaving room for double buffering in the
  192 KB unified buffer.
"""

from __future__ import annotations

ASCEND_BLOCK_V = 2048
ASCEND_TOKEN_CHUNK = 1024
