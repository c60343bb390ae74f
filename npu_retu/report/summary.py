"""What a finished run prints on the terminal: the SFT summary (with its phase table) and the
pipeline's summary (both stages and the held-out comparison)."""

from __future__ import annotations


def print_sft_summary(result) -> None:
    """The run folder, steps and compute of a :class:`~npu_retu.trainer.sft.SFTResult`, its phase
    table, the online monitor's first decision and the picked checkpoint."""
    from npu_retu.report.phases import format_phase_table

    print(f"\nrun folder: {result.run_dir}")
    print(f"steps: {result.steps}, training compute: {result.flops:.4g} FLOPs")
    if result.phase_report is not None:
        print(format_phase_table(result.phase_report))
        if result.first_decision is not None:
            d = result.first_decision
            print(f"online monitor: {d.action} at step {d.step} -> checkpoint step {d.checkpoint_step} ({d.reason})")
        if result.picked_checkpoint is not None:
            print(f"picked checkpoint: {result.picked_checkpoint}")
        else:
            print("picked checkpoint: none (no validation point with a checkpoint in the chosen sub-phase)")


def print_pipeline_summary(result) -> None:
    """Both stages of a :class:`~npu_retu.trainer.pipeline.PipelineResult`, the first-vs-last
    held-out comparison with its standard error, and where report.md is."""
    print(f"\nrun folder: {result.run_dir}")
    print(f"SFT: {result.sft_flops:.4g} FLOPs; the monitor picked step {result.picked_step} ({result.picked_checkpoint})")
    print(f"RL: {result.rl_flops:.4g} FLOPs")
    c = result.comparison
    if c:
        s, e = c["start"], c["end"]
        print(f"held-out accuracy, SFT checkpoint (RL step {c['start_step']}): {s['summary']}")
        print(f"held-out accuracy, after RL (RL step {c['end_step']}):  {e['summary']}")
        print(
            f"RL improvement: {100 * c['difference']:+.2f} points, standard error of the paired difference "
            f"{100 * c['stderr']:.2f} ({'n/a' if c['z'] is None else format(c['z'], '.1f')} s.e.; n={e['n']}, T={e['temperature']}, top-p={e['top_p']}, "
            f"{e['num_problems']} problems)"
        )
    print(f"report: {result.report}")
