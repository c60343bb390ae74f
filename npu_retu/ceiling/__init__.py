"""The Plasticity-Ceiling analysis (paper §4.2): fitting the sigmoidal power law of Eq. 11 / Eq. 12
to (compute, score) points with Appendix D's robust pipeline, to read off the ceiling ``A`` and the
plasticity ``A - P_start``. See :mod:`npu_retu.ceiling.fit`.
"""

from npu_retu.ceiling.fit import CeilingFit, CeilingFitError, fit_ceiling, sigmoid_power_law

__all__ = ["CeilingFit", "CeilingFitError", "fit_ceiling", "sigmoid_power_law"]
