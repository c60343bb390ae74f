"""What people read about a run: metrics files (:mod:`~npu_retu.report.metrics`), PNG figures
(:mod:`~npu_retu.report.plots`), the terminal printers and the Markdown reports (the phase table,
the plasticity table, the plan's and the fit's text, run summaries, the pipeline's report.md and
the pieces every report shares)."""
