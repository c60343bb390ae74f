"""The text of ``npu-retu flops``: the step table of a :func:`npu_retu.flops.step_report` result and
the Table 4 comparison of a :func:`npu_retu.flops.table4_report` result."""

from __future__ import annotations


def step_text(result: dict) -> str:
    """The human table of a step report (the JSON of ``npu-retu flops --phase --json`` is ``result``)."""
    s = result["shape"]
    lines = [
        f"model   {result['model']}  (L={s['num_layers']} H={s['hidden_size']} H_ff={s['intermediate_size']} "
        f"V={s['vocab_size']} D_kv={s['kv_dim']})",
        f"phase   {result['phase']} ({result['equation']})  "
        + " ".join(f"{k}={v:g}" for k, v in result["inputs"].items()),
        "",
        f"{'S (tokens)':>12}  {'forward FLOPs/token':>20}  {'train FLOPs/token':>18}",
    ]
    for row in result["per_token"]:
        lines.append(f"{row['seq_len']:>12g}  {row['forward_flops']:>20.4e}  {row['train_flops']:>18.4e}")
    lines += [
        "",
        f"per step        {result['step_flops']:.4e} FLOPs = {result['step_exaflops']:.4f} exaFLOPs",
        f"{result['steps']} step(s)  {result['total_exaflops']:.4f} exaFLOPs",
    ]
    if result["checkpoints"]:
        lines += ["", f"{'checkpoint':>10}  {'exaFLOPs':>12}"]
        lines += [f"{c['step']:>10}  {c['exaflops']:>12.3f}" for c in result["checkpoints"]]
    if result["mfu"]:
        m = result["mfu"]
        lines += ["", f"MFU     {100 * m['mfu']:.1f} %  ({m['num_chips']} x {m['chip']} at "
                      f"{m['peak_flops_per_chip'] / 1e12:g} TFLOP/s peak, {m['step_seconds']:g} s/step)"]
    return "\n".join(lines)


def table4_text(result: dict) -> str:
    """The human tables of ``npu-retu flops --table4`` (its JSON is ``result``)."""
    lines = [
        f"Table 4 x_sft (paper: Qwen2.5-7B; ours: {result['model']}), SFT compute = steps x 3·B·S·F_fwd(S) (Eq. 21)",
        "",
        f"{'dataset':<12} {'S':>6} {'B':>4} {'fwd FLOPs/token':>16} {'step exaFLOPs':>14}",
    ]
    for name, d in result["datasets"].items():
        lines.append(f"{name:<12} {d['mean_seq_len']:>6} {d['batch_size']:>4} "
                     f"{d['forward_flops_per_token']:>16.4e} {d['step_exaflops']:>14.5f}")
    lines += ["", f"{'dataset':<12} {'step':>6} {'ours':>10} {'paper':>10} {'diff':>8}"]
    for r in result["rows"]:
        lines.append(f"{r['dataset']:<12} {r['step']:>6} {r['exaflops']:>10.2f} {r['paper_exaflops']:>10.1f} "
                     f"{r['difference']:>+8.2f}")
    return "\n".join(lines)
