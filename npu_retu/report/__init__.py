"""Run reports: metrics files, PNG figures (:mod:`~npu_retu.report.plots`) and the run report."""
