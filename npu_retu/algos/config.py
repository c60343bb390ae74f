"""The ``rl.algo`` config section lives with the other sections in :mod:`npu_retu.config`; this
module re-exports it for code that thinks of it as part of the algorithms."""

from npu_retu.config import AlgoConfig

__all__ = ["AlgoConfig"]
