"""The text of ``npu-retu plan``: the model, cluster, engine and batch lines, the memory table (one
column per ZeRO stage, GiB) and the compute and wall-time table of a :func:`npu_retu.plan.build_plan`
result."""

from __future__ import annotations

from npu_retu.plan import format_duration

GIB = 2**30


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value / GIB:.1f}"


def plan_text(r: dict) -> str:
    """The human tables of a plan (the JSON of ``npu-retu plan --json`` is ``r`` itself)."""
    m, c, e, w = r["model"], r["cluster"], r["engine"], r["workload"]
    parts = m["parameters_by_part"]
    lines = [
        f"plan    {r['config']}  ({r['phase']})",
        f"model   {m['source']}: L={m['num_layers']} H={m['hidden_size']} H_ff={m['intermediate_size']} "
        f"V={m['vocab_size']} D_kv={m['kv_dim']} heads={m['num_attention_heads']}",
        f"        {m['parameters']:,} parameters ({m['parameters'] / 1e9:.2f} B): embedding {parts['embedding'] / 1e6:,.1f} M, "
        f"LM head {parts['lm_head'] / 1e6:,.1f} M{' (tied)' if m['tie_word_embeddings'] else ''}, "
        f"attention {parts['attention'] / 1e6:,.1f} M, MLP {parts['mlp'] / 1e6:,.1f} M, norms {parts['norms'] / 1e6:,.2f} M",
        f"cluster {c['nodes']} nodes x {c['devices_per_node']} {c['chip']} = {c['devices']} devices (data parallel "
        f"{c['devices']}), {_gib(c['hbm_bytes'])} GiB each, {c['peak_flops_per_device'] / 1e12:g} TFLOP/s {c['precision']} peak",
        f"engine  {e['name']}" + (f" ZeRO-{e['zero_stage']}" if e["zero_stage"] is not None else " (plain data parallel)")
        + f", {e['precision']}{' mixed precision' if e['precision'] == 'bf16' else ''}, gradient checkpointing "
        f"{'on' if e['gradient_checkpointing'] else 'off'}, attention {e['attn_implementation']}"
        + (f", offload optimizer={e['offload_optimizer']} params={e['offload_params']}"
           if "cpu" in (e["offload_optimizer"], e["offload_params"]) else ""),
        _batch_line(r),
        "",
        f"Memory per device, GiB (micro-batch {w['micro_batch']} x {w['seq_len']} tokens; * = configured)",
    ]
    cols = r["memory"]
    header = f"  {'':<38}" + "".join(f"{col['name'] + ('*' if col['configured'] else ''):>10}" for col in cols)
    lines.append(header)

    def row(label: str, key, fmt=_gib):
        lines.append(f"  {label:<38}" + "".join(f"{fmt(key(col)):>10}" for col in cols))

    row("weights", lambda col: col["weights"])
    row("gradients", lambda col: col["gradients"])
    row("optimizer states", lambda col: col["optimizer"])
    row("ZeRO buffers (bucket, ZeRO-3 gather)", lambda col: col["zero_buffers"])
    if w["reference_model"]:
        row("reference model (KL)", lambda col: col["reference_model"])
    first = cols[0]
    if w["gradient_checkpointing"]:
        row("activations: layer inputs (2sbh x L)", lambda col: col["activations_detail"]["layer_inputs"])
        row("activations: one layer's recompute", lambda col: col["activations_detail"]["one_layer"])
    else:
        row("activations: all layers", lambda col: col["activations_detail"]["all_layers"])
    if first["logits"]:
        row("logits (bf16 + fp32 + log-softmax)", lambda col: col["logits"])
    if first["attention_mask"]:
        row("attention mask (b x s x s)", lambda col: col["attention_mask"])
    row("training peak", lambda col: col["train_peak"])
    if w["eval_micro_batch"]:
        row(f"validation peak (eval batch {w['eval_micro_batch']})", lambda col: col["eval_peak"])
    if w["rollout_sequences"]:
        row(f"KV cache ({w['rollout_sequences']} seqs x {w['rollout_seq_len']})", lambda col: col["kv_cache"])
        row("rollout peak", lambda col: col["rollout_peak"])
    row("peak", lambda col: col["peak"])
    row(f"usable ({100 * (1 - r['headroom']):.0f} % of HBM)", lambda col: col["usable_hbm"])
    lines.append(f"  {'':<38}" + "".join(f"{'fits' if col['fits'] else 'NO FIT':>10}" for col in cols))
    if any(col["host"] for col in cols):
        row("host memory per device (offload)", lambda col: col["host"])
    if w["gradient_checkpointing"] and first["logits"]:
        lines.append("  (with checkpointing the peak counts the larger of the logits and one layer's recompute: "
                     "they are not alive together)")
    lines.append(f"  checkpoints: at least {r['checkpoint_bytes'] / 1e9:,.0f} GB of disk each (weights + optimizer states)")

    comp = r["compute"]
    lines += [
        "",
        f"Compute ({comp['equation']}) and wall time at MFU {r['mfu']:g} (an assumption: pass --mfu from a measured run)",
        f"  S = {comp['mean_seq_len']:g} tokens ({comp['mean_seq_len_source']})",
        f"  steps = {comp['steps']:,} ({comp['steps_source']}), checkpoint every {comp['checkpoint_every']} steps",
        f"  {'':<10}{'':<16}{'steps':>8}{'exaFLOPs':>12}{'wall time':>12}",
    ]
    for case in comp["cases"]:
        for label, key, steps in (("per step", "per_step", 1), ("checkpoint", "per_checkpoint", comp["checkpoint_every"]),
                                  ("phase", "phase", comp["steps"])):
            t = case[key]
            lines.append(f"  {case['label']:<10}{label:<16}{steps:>8,}{t['exaflops']:>12.4g}{format_duration(t['seconds']):>12}")
    for check in comp.get("paper_check", []):
        lines.append(f"  paper check: {check['step']:,} steps = {check['ours_exaflops']:.2f} exaFLOPs "
                     f"({check['source']}: {check['paper_exaflops']})")
    if r["notes"]:
        lines.append("")
        lines += [f"note: {n}" for n in r["notes"]]
    return "\n".join(lines)


def _batch_line(r: dict) -> str:
    b = r["batch"]
    if r["phase"] == "sft":
        return (f"batch   global {b['global_batch']} = micro {b['micro_batch_per_device']} x {r['cluster']['devices']} devices "
                f"x {b['accumulation_steps']:g} accumulation; sequences up to {b['max_length']} tokens (data.max_length)")
    return (f"batch   {b['train_batch_prompts']} prompts x G={b['group_size']} per step (generation rounds of "
            f"{b['gen_batch_prompts']} prompts); {b['sequences_per_device_per_mini_batch']:g} sequences per device per "
            f"mini-batch, micro {b['micro_batch_per_device']}; rollout decodes {b['rollout_sequences_per_device']} "
            f"sequences per device; prompt {b['max_prompt_length']} + response {b['max_response_length']} tokens")
