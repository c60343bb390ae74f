"""The SFT phase monitor (paper §6.2.1, Eq. 13-17).

* :mod:`~npu_retu.monitor.phases` labels a finished validation-loss curve (Adaptive / Stable / Mild /
  Severe) and picks the checkpoint to start RL from.
* :mod:`~npu_retu.monitor.online` decides during SFT, from the running minimum, when to switch to RL
  or roll back.
"""

from npu_retu.monitor.online import Decision, PhaseMonitor
from npu_retu.monitor.phases import PhaseReport, SubPhase, build_report, label_curve, pick_checkpoint

__all__ = ["Decision", "PhaseMonitor", "PhaseReport", "SubPhase", "build_report", "label_curve", "pick_checkpoint"]
