"""Fused kernels (imported as ``npu_retu.kernels``).

The fused log-prob / policy-loss kernels arrive with their own issue; this package already holds
the layout so that the import path is stable.
"""
