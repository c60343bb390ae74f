"""Capacity planning for a run before it starts: memory per device, compute, and wall time.

Three questions a user has before booking a cluster, answered from the config alone:

* **Does it fit?** Bytes per device for the weights, gradients and optimizer states under each ZeRO
  stage (Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion Parameter
  Models", Fig. 1 and §5), plus activations (Korthikanti et al. 2022, "Reducing Activation
  Recomputation in Large Transformer Models", §4), logits and, for RL, the rollout's KV cache.
* **How much compute?** The paper's own FLOPs accounting (Appendix C, :mod:`npu_retu.flops`; never
  re-derived here).
* **How long?** FLOPs / (devices x chip peak x MFU), with MFU an assumption the user replaces with
  a measured value.

The arithmetic is pure functions of numbers; :func:`build_plan` reads a config and the model's
shape and applies it for ``npu-retu plan``, whose text is :mod:`npu_retu.report.plan_text`.
Bytes are bytes; the CLI prints GiB (2**30).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from npu_retu import flops as fl
from npu_retu.errors import UserError
from npu_retu.flops import ModelShape
from npu_retu.models.presets import MODEL_PRESETS, find_preset, preset_names

# ----------------------------------------------------------------------------------------------
# Model: the shape Appendix C needs, plus what an exact parameter count needs
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """A dense decoder-only transformer as ``config.json`` describes it."""

    shape: ModelShape  # L, H, H_ff, V, D_kv (Appendix C)
    num_attention_heads: int
    head_dim: int
    tie_word_embeddings: bool  # one V x H matrix for the embedding and the LM head
    qkv_bias: bool  # biases on the q / k / v projections (Qwen2: yes; Llama: attention_bias)
    o_bias: bool  # bias on the output projection (Llama's attention_bias sets it; Qwen2: no)
    mlp_bias: bool  # biases on gate / up / down (Llama's mlp_bias)

    @property
    def q_dim(self) -> int:
        """Output width of the q projection (num_attention_heads x head_dim; = H for most models)."""
        return self.num_attention_heads * self.head_dim


def model_spec(values: Mapping, source: str = "model config") -> ModelSpec:
    """Build a :class:`ModelSpec` from a ``config.json`` dict (a preset or a model folder's file).

    The Appendix C shape comes from :meth:`ModelShape.from_hf_config`. Bias rules follow the
    transformers implementations: ``model_type`` qwen2 has biases on q / k / v only (always, no
    config key); other models read ``attention_bias`` (q / k / v / o) and ``mlp_bias``, default off.
    """
    values = dict(values)
    if "num_hidden_layers" not in values and isinstance(values.get("text_config"), Mapping):
        values = dict(values["text_config"])
    shape = ModelShape.from_hf_config(values)
    heads = values.get("num_attention_heads")
    if isinstance(heads, bool) or not isinstance(heads, int) or heads <= 0:
        raise UserError(f"{source}: field 'num_attention_heads' must be a positive integer, got {heads!r}")
    head_dim = values.get("head_dim") or shape.hidden_size // heads
    qwen2 = values.get("model_type") == "qwen2"
    attention_bias = bool(values.get("attention_bias", False))
    return ModelSpec(
        shape=shape,
        num_attention_heads=heads,
        head_dim=int(head_dim),
        tie_word_embeddings=bool(values.get("tie_word_embeddings", False)),
        qkv_bias=qwen2 or attention_bias,
        o_bias=attention_bias and not qwen2,
        mlp_bias=bool(values.get("mlp_bias", False)),
    )


@dataclass(frozen=True)
class ParameterCount:
    """Parameters by component; ``total`` counts a tied embedding / LM head once."""

    embedding: int
    lm_head: int  # 0 when tied to the embedding
    attention: int  # q, k, v, o (+ biases) over all layers
    mlp: int  # gate, up, down (+ biases) over all layers
    norms: int  # two RMSNorms per layer + the final norm

    @property
    def total(self) -> int:
        return self.embedding + self.lm_head + self.attention + self.mlp + self.norms


def count_parameters(spec: ModelSpec) -> ParameterCount:
    """Exact parameter count of a Qwen2 / Llama-style model from its config.

    embedding V·H; LM head V·H unless ``tie_word_embeddings``; per layer q H·q_dim, k and v
    H·D_kv each, o q_dim·H (+ biases per :func:`model_spec`), MLP 3·H·H_ff, two RMSNorms 2·H; a
    final RMSNorm H. Qwen2.5-7B: 7,615,616,512; Llama-3.2-3B: 3,212,749,824 (the model cards).
    """
    s = spec.shape
    H, L = s.hidden_size, s.num_layers
    attention = H * spec.q_dim + 2 * H * s.kv_dim + spec.q_dim * H
    if spec.qkv_bias:
        attention += spec.q_dim + 2 * s.kv_dim
    if spec.o_bias:
        attention += H
    mlp = 3 * H * s.intermediate_size
    if spec.mlp_bias:
        mlp += 2 * s.intermediate_size + H
    embedding = s.vocab_size * H
    return ParameterCount(
        embedding=embedding,
        lm_head=0 if spec.tie_word_embeddings else embedding,
        attention=L * attention,
        mlp=L * mlp,
        norms=L * 2 * H + H,
    )


def largest_module_parameters(spec: ModelSpec) -> int:
    """Parameters of the largest single module ZeRO-3 must gather at once: the V x H embedding /
    LM head, or one decoder layer's biggest linear (the MLP's H x H_ff), whichever is larger."""
    s = spec.shape
    return max(s.vocab_size * s.hidden_size, s.hidden_size * s.intermediate_size)


# ----------------------------------------------------------------------------------------------
# Model states under ZeRO (Rajbhandari et al. 2020)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StateBytesPerParam:
    """Bytes per parameter for the weights, the gradients and the optimizer states (K)."""

    weights: int
    gradients: int
    optimizer: int


# Mixed-precision Adam (ZeRO paper §3.1 and Fig. 1, K = 12): bf16 weights 2, bf16 gradients 2,
# fp32 master weights + momentum + variance 4 + 4 + 4. Plain fp32 Adam: 4 + 4 + (4 + 4), no master copy.
STATE_BYTES: dict[str, StateBytesPerParam] = {
    "bf16": StateBytesPerParam(weights=2, gradients=2, optimizer=12),
    "fp32": StateBytesPerParam(weights=4, gradients=4, optimizer=8),
}

# The local engine (npu_retu.engine.local) is torch AdamW on the model as loaded: no master copy,
# momentum and variance in the model's own dtype.
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def local_state_bytes(model_dtype: str) -> StateBytesPerParam:
    """Bytes per parameter of the local engine: weights, gradients and AdamW's m and v all in
    ``model_dtype`` (2 + 2 + 4 for bfloat16, 4 + 4 + 8 for float32)."""
    d = _DTYPE_BYTES[model_dtype]
    return StateBytesPerParam(weights=d, gradients=d, optimizer=2 * d)


@dataclass(frozen=True)
class StateMemory:
    """Bytes of model states on one device and in its host's memory (ZeRO-Offload)."""

    weights: float
    gradients: float
    optimizer: float
    host: float  # bytes this device's rank keeps in host memory

    @property
    def device_total(self) -> float:
        return self.weights + self.gradients + self.optimizer


def zero_state_bytes(
    num_params: int,
    *,
    stage: int,
    dp_size: int,
    per_param: StateBytesPerParam,
    offload_optimizer: bool = False,
    offload_params: bool = False,
) -> StateMemory:
    """Weights, gradients and optimizer states per device for a ZeRO stage (ZeRO paper Fig. 1).

    With Ψ parameters, N data-parallel ranks and (w, g, K) bytes per parameter:

    * stage 0 (plain data parallel): (w + g + K)·Ψ on every device;
    * stage 1 (P_os): (w + g)·Ψ + K·Ψ/N;
    * stage 2 (P_os+g): w·Ψ + (g + K)·Ψ/N;
    * stage 3 (P_os+g+p): (w + g + K)·Ψ/N.

    ``offload_optimizer`` (ZeRO-Offload, stage >= 1) moves this rank's K·Ψ/N to host memory;
    ``offload_params`` (stage 3 only) moves its w·Ψ/N weight shard there too. Mixed precision,
    Ψ = 7.5 B, N = 64, stage 3: 16·Ψ/64 = 1.875 GB per device, as in the paper's Fig. 1.
    """
    if stage not in (0, 1, 2, 3):
        raise UserError(f"ZeRO stage must be 0, 1, 2 or 3, got {stage!r}")
    if dp_size < 1:
        raise UserError(f"data-parallel size must be >= 1, got {dp_size!r}")
    if offload_optimizer and stage == 0:
        raise UserError("optimizer offload needs ZeRO stage >= 1")
    if offload_params and stage != 3:
        raise UserError("parameter offload needs ZeRO stage 3")
    psi, n = float(num_params), float(dp_size)
    weights = psi * per_param.weights / (n if stage == 3 else 1)
    gradients = psi * per_param.gradients / (n if stage >= 2 else 1)
    optimizer = psi * per_param.optimizer / (n if stage >= 1 else 1)
    host = 0.0
    if offload_optimizer:
        host, optimizer = host + optimizer, 0.0
    if offload_params:
        host, weights = host + weights, 0.0
    return StateMemory(weights=weights, gradients=gradients, optimizer=optimizer, host=host)


def zero_buffer_bytes(
    spec: ModelSpec, num_params: int, *, stage: int, bucket_elements: int, per_param: StateBytesPerParam
) -> float:
    """DeepSpeed's working buffers on top of the partitioned states (an estimate).

    Stages 1-3 reduce gradients through a bucket of ``engine.reduce_bucket_size`` elements in the
    gradient dtype. Stage 3 also gathers full weights just before use: the module being computed
    (at most :func:`largest_module_parameters`) plus a prefetch bucket of the same element count
    (npu_retu.engine.deepspeed_engine sets ``stage3_prefetch_bucket_size`` to the bucket size),
    capped at the whole model. Stage 0 (PyTorch DDP-style all-reduce) uses small buckets: 0 here.
    """
    if stage == 0:
        return 0.0
    total = float(bucket_elements) * per_param.gradients
    if stage == 3:
        gathered = min(num_params, largest_module_parameters(spec) + bucket_elements)
        total += float(gathered) * per_param.weights
    return total


# ----------------------------------------------------------------------------------------------
# Activations, logits, KV cache
# ----------------------------------------------------------------------------------------------


def layer_activation_bytes(
    *, seq_len: int, micro_batch: int, hidden: int, heads: int, ffn: int, flash_attention: bool,
    kv_dim: int | None = None, head_dim: int | None = None, activation_bytes: int = 2,
) -> float:
    """Bytes one decoder layer keeps for its backward pass, counted the way Korthikanti et al. 2022
    ("Reducing Activation Recomputation in Large Transformer Models", §4.1) count them: every
    tensor autograd saves, for 16-bit activations without tensor / sequence parallelism.

    Korthikanti's GPT layer comes to ``s·b·h·(34 + 5·a·s/h)``: 11·sbh attention, 19·sbh for a 4h GeLU
    MLP with dropout, 4·sbh two LayerNorms, and 5·a·s²·b for the s x s scores, softmax and dropout
    mask. The same count for a transformers Qwen2 / Llama layer (no dropout, SwiGLU, RMSNorm that
    upcasts to fp32) gives, with D_kv the K width and d the head size:

    * two RMSNorms: fp32 input (4·sbh) + bf16 normalised (2·sbh) each = 12·sbh;
    * the q/k/v projections' and the MLP's inputs (the norm outputs): 2 x 2·sbh = 4·sbh;
    * attention: rotated q, the output (2·sbh each), rotated k and v (2·sbh·D_kv/h each), the
      rotary cos / sin (2·sbh·d/h each) = (4 + 4·D_kv/h + 4·d/h)·sbh;
    * SwiGLU: gate and up outputs, SiLU(gate), their product, each s x H_ff = 8·sbh·H_ff/h;

    i.e. ``s·b·h·(20 + 4·D_kv/h + 4·d/h + 8·H_ff/h)`` (63.0 for Qwen2.5-7B, 42.8 for Llama-3.2-3B).
    tests/test_plan.py checks it against the tensors a real transformers Qwen2 layer saves.
    Ascend's fused RMSNorm / SwiGLU (engine.npu_fused_ops) save less: the estimate is then high.

    ``flash_attention`` (sdpa's flash / memory-efficient kernels, flash_attention_2, Ascend's fused
    attention) keeps O(s) softmax statistics and recomputes the scores in the backward pass; eager
    attention adds Korthikanti's 5·a·s²·b bytes (the term dropped with flash / sdpa).
    ``activation_bytes`` scales from 16-bit (2) to fp32 (4) activations. ``kv_dim`` and ``head_dim``
    default to multi-head attention (D_kv = h, d = h / a).
    """
    s, b, h = float(seq_len), float(micro_batch), float(hidden)
    kv = h if kv_dim is None else float(kv_dim)
    d = h / heads if head_dim is None else float(head_dim)
    coefficient = 20.0 + 4.0 * kv / h + 4.0 * d / h + 8.0 * ffn / h
    if not flash_attention:
        coefficient += 5.0 * heads * s / h
    return s * b * h * coefficient * activation_bytes / 2


def checkpointed_input_bytes(*, seq_len: int, micro_batch: int, hidden: int, num_layers: int, activation_bytes: int = 2) -> float:
    """With gradient checkpointing, each layer keeps only its input: ``2·s·b·h`` bytes (16-bit) x L."""
    return float(seq_len) * micro_batch * hidden * activation_bytes * num_layers


def activation_bytes(
    spec: ModelSpec, *, seq_len: int, micro_batch: int, gradient_checkpointing: bool, flash_attention: bool,
    activation_bytes: int = 2,
) -> dict[str, float]:
    """Activation memory of one micro-batch's forward + backward, by part.

    * with gradient checkpointing (transformers checkpoints each decoder layer): the L layer inputs
      (:func:`checkpointed_input_bytes`) plus one layer's working set while it is recomputed and
      back-propagated (:func:`layer_activation_bytes`);
    * without: all L layers' saved activations (L x :func:`layer_activation_bytes`).
    """
    s = spec.shape
    layer = layer_activation_bytes(
        seq_len=seq_len, micro_batch=micro_batch, hidden=s.hidden_size, heads=spec.num_attention_heads,
        ffn=s.intermediate_size, flash_attention=flash_attention, kv_dim=s.kv_dim, head_dim=spec.head_dim,
        activation_bytes=activation_bytes,
    )
    if gradient_checkpointing:
        inputs = checkpointed_input_bytes(
            seq_len=seq_len, micro_batch=micro_batch, hidden=s.hidden_size, num_layers=s.num_layers,
            activation_bytes=activation_bytes,
        )
        return {"layer_inputs": inputs, "one_layer": layer}
    return {"layer_inputs": 0.0, "one_layer": 0.0, "all_layers": s.num_layers * layer}


# Full-vocabulary logits of the loss, in bytes per (token x vocabulary entry):
# npu_retu.algos.sft_loss.NextTokenNLL (unfused) holds the model's bf16 logits (2), their fp32 copy (4)
# and cross-entropy's saved fp32 log-softmax (4) at the end of the forward pass.
LOGITS_BYTES_PER_ENTRY = 10


def logits_bytes(*, seq_len: int, micro_batch: int, vocab_size: int, bytes_per_entry: int = LOGITS_BYTES_PER_ENTRY) -> float:
    """Memory of the full logits of a micro-batch: ``s·b·V·bytes_per_entry``.

    The fp32 logits alone are s·b·V·4; the loss path we run keeps the bf16 logits, an fp32 copy and
    the fp32 log-softmax that cross-entropy saves (10 bytes per entry, see
    :data:`LOGITS_BYTES_PER_ENTRY`). RL's fused log-prob kernel (``rl.kernels`` other than
    ``unfused``) computes log-probs from the hidden states in vocabulary chunks and never holds
    them, so RL plans count 0 here unless ``rl.kernels=unfused``.
    """
    return float(seq_len) * micro_batch * vocab_size * bytes_per_entry


def kv_cache_bytes(spec: ModelSpec, *, sequences: int, seq_len: int, bytes_per_value: int = 2) -> float:
    """KV cache of ``sequences`` sequences of ``seq_len`` tokens: ``2·L·D_kv·bytes`` per token
    (keys and values of every layer; 57,344 bytes per token for Qwen2.5-7B in bf16)."""
    s = spec.shape
    return float(sequences) * seq_len * 2 * s.num_layers * s.kv_dim * bytes_per_value


def attention_mask_bytes(*, seq_len: int, micro_batch: int, mask_bytes: int = 2) -> float:
    """The b x 1 x s x s additive mask transformers builds for sdpa / eager attention when a batch
    is padded: ``b·s²·mask_bytes`` (model dtype)."""
    return float(micro_batch) * seq_len * seq_len * mask_bytes


# ----------------------------------------------------------------------------------------------
# Steps and time
# ----------------------------------------------------------------------------------------------


def wall_seconds(flops: float, *, devices: int, peak_flops_per_device: float, mfu: float) -> float:
    """Wall time of ``flops`` on ``devices`` devices at model FLOPs utilisation ``mfu``:
    ``flops / (devices · peak · mfu)`` (the inverse of :func:`npu_retu.flops.mfu`)."""
    if devices < 1 or not peak_flops_per_device > 0 or not 0 < mfu <= 1:
        raise UserError(f"need devices >= 1, peak > 0 and 0 < mfu <= 1, got {devices}, {peak_flops_per_device}, {mfu}")
    return flops / (devices * peak_flops_per_device * mfu)


def format_duration(seconds: float) -> str:
    """'42 s', '13.5 min', '7.2 h', '3.4 d'."""
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


# Rows of RETU's SFT datasets (paper §5.1 and Appendix E: "around 889K unique samples"; Easy / Hard /
# Uniform102K "each containing 102.4K samples"; S1K-1.1 has 1,000). For SFT889K the paper's step
# counts do not pin one row count down: see DATASET_ROWS_NOTE.
RETU_SFT_ROWS: dict[str, int] = {
    "SFT889K": 889_000,
    "Easy102K": 102_400,
    "Uniform102K": 102_400,
    "Hard102K": 102_400,
    "S1K": 1_000,
}

# SFT compute the paper prints for other models, keyed by (preset, dataset) then SFT step, in
# exaFLOPs. Llama3.2-3B on SFT889K (§6.3): "a light SFT (Adaptive Sub-phase) ... (at 17.8
# exaFLOPs)" and "peak performance during the SFT Stable Sub-phase at 532.5 exaFLOPs" are the
# checkpoints at 360 and 10,800 steps of Eq. 21 with SFT889K's Qwen-token mean length 3,771 and batch
# 512 (17.75 and 532.4): the paper evidently counted Llama's compute with the same S.
PAPER_SFT_EXAFLOPS: dict[tuple[str, str], dict[int, float]] = {
    ("Llama-3.2-3B", "SFT889K"): {360: 17.8, 10800: 532.5},
}

SFT889K_STEPS_NOTE = (
    "the paper's step counts for SFT889K do not agree with ~889K rows: 8 epochs x 889,000 / 512 = "
    "13,891 steps, but Table 4's last SFT889K checkpoint is step 14,080 (= 8 x 1,760 steps, i.e. "
    "~900.6K-901.1K rows per epoch), and B.1 calls 360 steps '0.2 epochs' (1,800 steps per epoch, "
    "921.6K rows). Pass --rows with your file's row count; the FLOPs per step do not depend on it."
)


# ----------------------------------------------------------------------------------------------
# The memory table: every ZeRO stage side by side
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """What one device runs, for the memory estimate.

    ``seq_len`` x ``micro_batch`` is the training micro-batch (worst case: every sequence at the
    maximum length). ``logits_bytes_per_entry`` is 0 when the fused log-prob kernel is used.
    ``rollout_sequences`` > 0 adds an RL rollout phase: that many sequences of ``rollout_seq_len``
    tokens decoded together with a KV cache while the model states stay resident.
    ``eval_micro_batch`` > 0 adds the SFT validation pass: no activations kept, but the full logits
    of ``eval_micro_batch`` sequences (the same loss code, 10 bytes per entry) while states stay resident.
    """

    seq_len: int
    micro_batch: int
    gradient_checkpointing: bool
    flash_attention: bool
    padded: bool  # the micro-batch carries padding: sdpa / eager then use an s x s mask
    activation_bytes: int = 2
    logits_bytes_per_entry: int = LOGITS_BYTES_PER_ENTRY
    rollout_sequences: int = 0
    rollout_seq_len: int = 0
    reference_model: bool = False  # a frozen reference copy (rl.algo.kl_coef > 0), 16-bit, not sharded
    eval_micro_batch: int = 0  # > 0: a no-grad validation-loss pass of this many sequences of seq_len
    padded_eval: bool = False  # the validation micro-batch carries padding (sdpa / eager: an s x s mask)


def memory_rows(
    spec: ModelSpec,
    workload: Workload,
    *,
    dp_size: int,
    per_param: StateBytesPerParam,
    stages: tuple[int, ...] = (0, 1, 2, 3),
    bucket_elements: int = 500_000_000,
    offload_optimizer: bool = False,
    offload_params: bool = False,
    hbm_bytes: float | None = None,
    headroom: float = 0.1,
    zero_buffers: bool = True,
) -> list[dict]:
    """Bytes per device for each ZeRO stage in ``stages`` (one dict per stage).

    Peak during training = model states (:func:`zero_state_bytes`) + ZeRO buffers
    (:func:`zero_buffer_bytes`) + reference model + activations, where with gradient checkpointing
    the activations peak at the layer inputs plus the larger of the loss's logits and one layer's
    recompute working set (the loss's logits are freed before the first layer is recomputed), and
    without it at all layers' activations plus the logits. An RL rollout phase (KV cache, states
    resident) and an SFT validation pass (logits of the eval micro-batch, one layer's forward
    transients, states resident) are further peaks; the device must hold the largest. Offload flags apply to the stages
    that support them (optimizer: >= 1, parameters: 3). ``fits`` compares the peak with
    ``hbm_bytes · (1 - headroom)``: the headroom covers the runtime context, allocator
    fragmentation and what this estimate leaves out.
    """
    params = count_parameters(spec).total
    s = spec.shape
    acts = activation_bytes(
        spec, seq_len=workload.seq_len, micro_batch=workload.micro_batch,
        gradient_checkpointing=workload.gradient_checkpointing, flash_attention=workload.flash_attention,
        activation_bytes=workload.activation_bytes,
    )
    logits = logits_bytes(
        seq_len=workload.seq_len, micro_batch=workload.micro_batch, vocab_size=s.vocab_size,
        bytes_per_entry=workload.logits_bytes_per_entry,
    )
    mask = (
        attention_mask_bytes(seq_len=workload.seq_len, micro_batch=workload.micro_batch, mask_bytes=workload.activation_bytes)
        if workload.padded else 0.0
    )
    if workload.gradient_checkpointing:
        activation_peak = acts["layer_inputs"] + max(acts["one_layer"], logits) + mask
    else:
        activation_peak = acts["all_layers"] + logits + mask
    kv = kv_cache_bytes(spec, sequences=workload.rollout_sequences, seq_len=workload.rollout_seq_len,
                        bytes_per_value=workload.activation_bytes)
    reference = float(params) * 2 if workload.reference_model else 0.0
    eval_extra = 0.0
    if workload.eval_micro_batch:
        b_eval = workload.eval_micro_batch
        eval_extra = (
            logits_bytes(seq_len=workload.seq_len, micro_batch=b_eval, vocab_size=s.vocab_size,
                         bytes_per_entry=workload.logits_bytes_per_entry)
            + layer_activation_bytes(
                seq_len=workload.seq_len, micro_batch=b_eval, hidden=s.hidden_size, heads=spec.num_attention_heads,
                ffn=s.intermediate_size, flash_attention=workload.flash_attention, kv_dim=s.kv_dim,
                head_dim=spec.head_dim, activation_bytes=workload.activation_bytes,
            )
            + (attention_mask_bytes(seq_len=workload.seq_len, micro_batch=b_eval, mask_bytes=workload.activation_bytes)
               if workload.padded_eval else 0.0)
        )
    usable = None if hbm_bytes is None else hbm_bytes * (1 - headroom)

    rows = []
    for stage in stages:
        states = zero_state_bytes(
            params, stage=stage, dp_size=dp_size, per_param=per_param,
            offload_optimizer=offload_optimizer and stage >= 1, offload_params=offload_params and stage == 3,
        )
        buffers = (
            zero_buffer_bytes(spec, params, stage=stage, bucket_elements=bucket_elements, per_param=per_param)
            if zero_buffers else 0.0
        )
        resident = states.device_total + buffers + reference
        train_peak = resident + activation_peak
        rollout_peak = resident + kv if workload.rollout_sequences else 0.0
        eval_peak = resident + eval_extra if workload.eval_micro_batch else 0.0
        peak = max(train_peak, rollout_peak, eval_peak)
        rows.append({
            "stage": stage,
            "weights": states.weights,
            "gradients": states.gradients,
            "optimizer": states.optimizer,
            "zero_buffers": buffers,
            "reference_model": reference,
            "activations": acts["layer_inputs"] + acts["one_layer"] + acts.get("all_layers", 0.0),
            "activations_detail": acts,
            "logits": logits,
            "attention_mask": mask,
            "train_peak": train_peak,
            "kv_cache": kv,
            "rollout_peak": rollout_peak,
            "eval_peak": eval_peak,
            "peak": peak,
            "host": states.host,
            "usable_hbm": usable,
            "fits": None if usable is None else peak <= usable,
        })
    return rows


# ----------------------------------------------------------------------------------------------
# The plan of a config: what ``npu-retu plan`` asks and everything it prints
# ----------------------------------------------------------------------------------------------

DEFAULT_MFU = 0.4
DEFAULT_HEADROOM = 0.1


@dataclass(frozen=True)
class PlanRequest:
    """The question ``npu-retu plan`` asks; the fields are its options (errors name them as flags)."""

    config: str  # a YAML path or a shipped config's name
    nodes: int
    devices_per_node: int
    chip: str  # a name npu_retu.device.chips knows (Ascend910B2, H100-SXM, ...)
    overrides: tuple[str, ...] | list[str] = ()
    phase: str = "sft"  # "sft" (Eq. 21) or "rl" (Eq. 22 / 23)
    mfu: float = DEFAULT_MFU
    headroom: float = DEFAULT_HEADROOM
    model: str | None = None  # a preset or a model folder; default: from model.path
    mean_len: float | None = None  # SFT: mean prompt+response tokens
    dataset: str | None = None  # SFT: one of RETU's datasets (fl.RETU_SFT_DATASETS)
    rows: int | None = None  # SFT: training examples
    seq_len: float | None = None  # RL: mean prompt+response tokens of a rollout
    rounds: float | None = None  # RL: generation rounds per step (dynamic sampling)


def _check_request(request: PlanRequest) -> None:
    from npu_retu.device.chips import CHIP_PEAK_FLOPS, chip_key

    if request.nodes < 1:
        raise UserError(f"--nodes must be >= 1, got {request.nodes}")
    if request.devices_per_node < 1:
        raise UserError(f"--devices-per-node must be >= 1, got {request.devices_per_node}")
    if chip_key(request.chip) is None:
        raise UserError(f"--chip {request.chip!r} is not a known chip; known chips: {', '.join(CHIP_PEAK_FLOPS)}")
    if not 0 < request.mfu <= 1:
        raise UserError(f"--mfu must be in (0, 1], got {request.mfu}")
    if not 0 <= request.headroom < 1:
        raise UserError(f"--headroom must be in [0, 1), got {request.headroom}")
    for flag, value in (("--mean-len", request.mean_len), ("--seq-len", request.seq_len)):
        if value is not None and not value > 0:
            raise UserError(f"{flag} must be > 0, got {value}")
    if request.rows is not None and request.rows < 1:
        raise UserError(f"--rows must be >= 1, got {request.rows}")
    if request.rounds is not None and not request.rounds >= 1:
        raise UserError(f"--rounds must be >= 1, got {request.rounds}")
    if request.phase == "rl" and (request.mean_len is not None or request.dataset or request.rows is not None):
        raise UserError("--phase rl does not use --mean-len / --dataset / --rows (use --seq-len)")
    if request.phase == "sft" and (request.seq_len is not None or request.rounds is not None):
        raise UserError("--phase sft does not use --seq-len / --rounds (use --mean-len or --dataset)")


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9.]", "", text.lower())


def _named_in_path(path: str, names) -> tuple[str, str] | None:
    """(name, path component) for the last component of ``path`` that starts with one of ``names``
    (ignoring case, '-' and '_'; the longest name wins), or None."""
    for component in reversed(Path(path).parts):
        hits = [name for name in names if _norm(component).startswith(_norm(name))]
        if hits:
            return max(hits, key=lambda n: len(_norm(n))), component
    return None


def resolve_model(cfg, model_arg: str | None) -> tuple[ModelSpec, str]:
    """The model spec and words that say where it came from: --model, model.path's config.json,
    or the preset a component of model.path names (``/path/to/Qwen2.5-7B``)."""

    def from_folder(path: str) -> ModelSpec:
        from npu_retu.flops import read_model_config

        return model_spec(*read_model_config(path))

    if model_arg:
        if Path(model_arg).exists():
            return from_folder(model_arg), f"--model {model_arg}"
        preset = find_preset(model_arg)
        if preset is None:
            raise UserError(f"--model {model_arg!r} is neither a preset ({', '.join(preset_names())}) nor a model folder")
        return model_spec(preset), f"preset {model_arg} (--model)"
    path = cfg.model.path
    if Path(path).exists() and (Path(path).is_file() or (Path(path) / "config.json").is_file()):
        return from_folder(path), f"{path}/config.json"
    named = _named_in_path(path, MODEL_PRESETS)
    if named is None:
        raise UserError(
            f"model.path {path!r} is not a model folder here and names no preset ({', '.join(preset_names())}); "
            "pass --model PRESET_OR_PATH"
        )
    name, component = named
    return model_spec(MODEL_PRESETS[name]), f"preset {name} (named by model.path component {component!r})"


def build_plan(request: PlanRequest) -> dict:
    """Everything ``npu-retu plan`` prints, as one JSON-ready dict: the model, cluster and engine,
    the batch, the memory table (every ZeRO stage, plus the local engine when configured), the disk
    per checkpoint, the compute and wall time per step / checkpoint / phase, and notes."""
    from npu_retu.config import load_config
    from npu_retu.configs import resolve_config_path
    from npu_retu.device.chips import chip_key, memory_bytes_for

    _check_request(request)
    cfg = load_config(resolve_config_path(request.config), list(request.overrides or []))
    spec, model_source = resolve_model(cfg, request.model)
    counts = count_parameters(spec)
    chip = chip_key(request.chip)
    devices = request.nodes * request.devices_per_node
    hbm = memory_bytes_for(chip)
    precision = "bf16" if cfg.engine.precision == "auto" else cfg.engine.precision
    peak = fl.peak_flops_for_chip(chip, precision)
    notes: list[str] = []

    if cfg.cluster.num_workers and cfg.cluster.num_workers != devices:
        notes.append(f"the config's cluster.num_workers is {cfg.cluster.num_workers}, this plan is for {devices} devices")

    common = {
        "config": str(request.config),
        "phase": request.phase,
        "model": {
            "source": model_source,
            "num_layers": spec.shape.num_layers, "hidden_size": spec.shape.hidden_size,
            "intermediate_size": spec.shape.intermediate_size, "vocab_size": spec.shape.vocab_size,
            "kv_dim": spec.shape.kv_dim, "num_attention_heads": spec.num_attention_heads,
            "tie_word_embeddings": spec.tie_word_embeddings,
            "parameters": counts.total,
            "parameters_by_part": {"embedding": counts.embedding, "lm_head": counts.lm_head, "attention": counts.attention,
                                   "mlp": counts.mlp, "norms": counts.norms},
        },
        "cluster": {
            "nodes": request.nodes, "devices_per_node": request.devices_per_node, "devices": devices, "chip": chip,
            "hbm_bytes": hbm, "peak_flops_per_device": peak, "precision": precision,
        },
        "engine": {
            "name": cfg.engine.name, "zero_stage": cfg.engine.zero_stage if cfg.engine.name == "deepspeed" else None,
            "precision": precision, "offload_optimizer": cfg.engine.offload_optimizer,
            "offload_params": cfg.engine.offload_params, "reduce_bucket_size": cfg.engine.reduce_bucket_size,
            "gradient_checkpointing": cfg.model.gradient_checkpointing,
            "attn_implementation": cfg.model.attn_implementation,
        },
        "mfu": request.mfu,
        "headroom": request.headroom,
    }
    if request.phase == "sft":
        workload, batch, compute = _sft(cfg, request, spec, devices, peak, notes)
    else:
        workload, batch, compute = _rl(cfg, request, spec, devices, peak, notes)

    per_param = STATE_BYTES[precision]
    rows = memory_rows(
        spec, workload, dp_size=devices, per_param=per_param, bucket_elements=cfg.engine.reduce_bucket_size,
        offload_optimizer=cfg.engine.offload_optimizer == "cpu", offload_params=cfg.engine.offload_params == "cpu",
        hbm_bytes=hbm, headroom=request.headroom,
    )
    columns = [{"name": f"ZeRO-{r['stage']}", **r} for r in rows]
    if cfg.engine.name == "local":
        (local,) = memory_rows(
            spec, workload, dp_size=devices, per_param=local_state_bytes(cfg.model.dtype), stages=(0,),
            hbm_bytes=hbm, headroom=request.headroom, zero_buffers=False,
        )
        columns.append({"name": "local", **local})
        configured = "local"
    else:
        configured = f"ZeRO-{cfg.engine.zero_stage}"
    for column in columns:
        column["configured"] = column["name"] == configured
    checkpoint_bytes = _checkpoint_bytes(cfg, counts.total, precision)
    return {
        **common,
        "batch": batch,
        "workload": {
            "seq_len": workload.seq_len, "micro_batch": workload.micro_batch,
            "gradient_checkpointing": workload.gradient_checkpointing, "flash_attention": workload.flash_attention,
            "padded": workload.padded, "logits_bytes_per_entry": workload.logits_bytes_per_entry,
            "rollout_sequences": workload.rollout_sequences, "rollout_seq_len": workload.rollout_seq_len,
            "reference_model": workload.reference_model, "eval_micro_batch": workload.eval_micro_batch,
        },
        "memory": columns,
        "configured": configured,
        "checkpoint_bytes": checkpoint_bytes,
        "compute": compute,
        "notes": notes,
    }


def _flash(cfg) -> bool:
    # sdpa picks flash / memory-efficient kernels for 16-bit inputs; eager materialises the scores
    return cfg.model.attn_implementation != "eager"


def _checkpoint_bytes(cfg, params: int, precision: str) -> float:
    """Disk per checkpoint, at least: the HF weights (model.dtype) + the optimizer states."""
    weights = {"float32": 4, "bfloat16": 2, "float16": 2}[cfg.model.dtype]
    optimizer = STATE_BYTES[precision].optimizer if cfg.engine.name == "deepspeed" else local_state_bytes(cfg.model.dtype).optimizer
    return float(params) * (weights + optimizer)


def _timing(flops: float, devices: int, peak: float, mfu: float) -> dict:
    seconds = wall_seconds(flops, devices=devices, peak_flops_per_device=peak, mfu=mfu)
    return {"flops": flops, "exaflops": flops / fl.EXA, "seconds": seconds}


def _sft(cfg, request, spec, devices, peak, notes):
    sft = cfg.sft
    per_rank = sft.micro_batch_size * devices
    accumulation = sft.global_batch_size / per_rank
    if sft.global_batch_size % per_rank:
        notes.append(
            f"sft.global_batch_size {sft.global_batch_size} is not a multiple of micro-batch x devices "
            f"({sft.micro_batch_size} x {devices}): the SFT trainer refuses this"
        )
    batch = {"global_batch": sft.global_batch_size, "micro_batch_per_device": sft.micro_batch_size,
             "accumulation_steps": accumulation, "max_length": cfg.data.max_length}

    dataset_name, dataset_source = request.dataset, "--dataset"
    if dataset_name is None and request.mean_len is None:
        named = next((hit for f in cfg.data.train_files if (hit := _named_in_path(f, fl.RETU_SFT_DATASETS))), None)
        if named:
            dataset_name, dataset_source = named[0], f"data.train_files component {named[1]!r}"
    if request.mean_len is not None:
        mean_len, length_source = request.mean_len, "--mean-len"
    elif dataset_name is not None:
        mean_len = fl.RETU_SFT_DATASETS[dataset_name].mean_seq_len
        length_source = f"{dataset_name}, from {dataset_source}; RETU's mean in Qwen2.5 tokens"
    else:
        raise UserError("SFT FLOPs need the data's mean length: pass --mean-len S or --dataset NAME "
                        f"({', '.join(fl.RETU_SFT_DATASETS)})")
    if dataset_name is not None and fl.RETU_SFT_DATASETS[dataset_name].batch_size != sft.global_batch_size:
        notes.append(f"RETU trained {dataset_name} at batch {fl.RETU_SFT_DATASETS[dataset_name].batch_size}; "
                     f"this config's is {sft.global_batch_size}")

    if request.rows is not None:
        rows, rows_source = request.rows, "--rows"
    elif dataset_name is not None:
        rows, rows_source = RETU_SFT_ROWS[dataset_name], f"{dataset_name} (paper §5.1 / Appendix E)"
    else:
        rows, rows_source = None, None
    if sft.max_steps > 0:
        steps, steps_source = sft.max_steps, "sft.max_steps"
    elif rows is not None:
        from npu_retu.trainer.sft import total_steps  # the trainer's own count

        steps = total_steps(cfg, rows)
        steps_source = f"ceil({sft.epochs:g} epochs x {rows:,} rows / {sft.global_batch_size})"
    else:
        raise UserError("SFT steps need the row count: pass --rows N (or --dataset NAME, or set sft.max_steps)")
    if dataset_name == "SFT889K" and request.rows is None and sft.max_steps == 0:
        notes.append(SFT889K_STEPS_NOTE)

    step_flops = fl.sft_step_flops(spec.shape, sft.global_batch_size, mean_len)
    interval = sft.save_every
    compute = {
        "equation": "Eq. 21: 3 x B x S x F_fwd(S)",
        "mean_seq_len": mean_len, "mean_seq_len_source": length_source,
        "rows": rows, "rows_source": rows_source, "steps": steps, "steps_source": steps_source,
        "checkpoint_every": interval,
        "cases": [{
            "label": "",
            "per_step": _timing(step_flops, devices, peak, request.mfu),
            "per_checkpoint": _timing(interval * step_flops, devices, peak, request.mfu),
            "phase": _timing(steps * step_flops, devices, peak, request.mfu),
        }],
    }
    paper = _paper_sft_exaflops(spec, dataset_name)
    if paper and sft.global_batch_size == fl.RETU_SFT_DATASETS[dataset_name].batch_size and request.mean_len is None:
        source, by_step = paper
        shown = {min(by_step), max(by_step), interval} & set(by_step)
        compute["paper_check"] = [
            {"step": step, "ours_exaflops": step * step_flops / fl.EXA, "paper_exaflops": by_step[step], "source": source}
            for step in sorted(shown)
        ]
    padded = cfg.model.attn_implementation != "flash_attention_2" and (sft.micro_batch_size > 1 or cfg.data.packing)
    workload = Workload(
        seq_len=cfg.data.max_length, micro_batch=sft.micro_batch_size,
        gradient_checkpointing=cfg.model.gradient_checkpointing, flash_attention=_flash(cfg), padded=padded,
        activation_bytes=2 if cfg.engine.precision != "fp32" else 4,
        eval_micro_batch=sft.eval_batch_size if cfg.data.val_files or cfg.data.val_size else 0,
        logits_bytes_per_entry=LOGITS_BYTES_PER_ENTRY if sft.kernels == "unfused" else 0,
        padded_eval=cfg.model.attn_implementation != "flash_attention_2" and sft.eval_batch_size > 1,
    )
    return workload, batch, compute


def _paper_sft_exaflops(spec: ModelSpec, dataset_name: str | None) -> tuple[str, dict[int, float]] | None:
    """The paper's printed SFT compute for this model (matched by shape) and dataset, if any."""
    if dataset_name is None:
        return None
    if spec.shape == fl.ModelShape.from_hf_config(MODEL_PRESETS["Qwen2.5-7B"]):
        table = fl.RETU_TABLE4_SFT_EXAFLOPS.get(dataset_name)
        return ("Table 4", table) if table else None
    for (preset, dataset), by_step in PAPER_SFT_EXAFLOPS.items():
        if dataset == dataset_name and spec.shape == fl.ModelShape.from_hf_config(MODEL_PRESETS[preset]):
            return "§6.3", by_step
    return None


def _rl(cfg, request, spec, devices, peak, notes):
    rl, algo = cfg.rl, cfg.rl.algo
    max_len = rl.max_prompt_length + rl.max_response_length
    sequences_per_mini = rl.mini_batch_prompts * algo.n
    per_device = sequences_per_mini / devices
    if sequences_per_mini % devices:
        notes.append(f"a mini-batch of {rl.mini_batch_prompts} prompts x {algo.n} = {sequences_per_mini} sequences "
                     f"does not split evenly over {devices} devices")
    elif per_device < rl.micro_batch_size:
        notes.append(f"each device gets {per_device:g} sequences per mini-batch, fewer than rl.micro_batch_size "
                     f"({rl.micro_batch_size}): the micro-batch is really {per_device:g}")
    micro = int(min(rl.micro_batch_size, max(1, per_device)))
    generated_per_device = -(-rl.gen_batch_prompts * algo.n // devices)
    rollout_sequences = min(rl.rollout.batch_size, generated_per_device)
    batch = {"gen_batch_prompts": rl.gen_batch_prompts, "train_batch_prompts": rl.train_batch_prompts,
             "mini_batch_prompts": rl.mini_batch_prompts, "group_size": algo.n,
             "sequences_per_mini_batch": sequences_per_mini, "sequences_per_device_per_mini_batch": per_device,
             "micro_batch_per_device": micro, "rollout_sequences_per_device": rollout_sequences,
             "max_prompt_length": rl.max_prompt_length, "max_response_length": rl.max_response_length}
    notes.append("the rollout engine is transformers generate (rl.rollout.engine): decoding is memory-bound, so "
                 "the MFU of generation is far below training's; measure it (npu-retu bench rl) and pass --mfu")

    if request.seq_len is not None:
        seq_len, seq_source = request.seq_len, "--seq-len"
    else:
        seq_len, seq_source = float(max_len), "upper bound: rl.max_prompt_length + rl.max_response_length; pass --seq-len"
    if algo.dynamic_sampling:
        equation = "Eq. 22: (K x B_gen + 3 x B_train) x G x S x F_fwd(S)"
        rounds = [request.rounds] if request.rounds is not None else sorted({1.0, float(algo.max_draws)})
        step_flops = {k: fl.dapo_step_flops(spec.shape, gen_batch=rl.gen_batch_prompts, rounds=k, group_size=algo.n,
                                            train_batch=rl.train_batch_prompts, seq_len=seq_len) for k in rounds}
    else:
        equation = "Eq. 23: 4 x B x G x S x F_fwd(S)"
        if request.rounds not in (None, 1):
            raise UserError(f"--rounds {request.rounds:g}: {cfg.rl.algorithm} has no dynamic sampling (one round per step)")
        step_flops = {1.0: fl.grpo_step_flops(spec.shape, batch=rl.train_batch_prompts, group_size=algo.n, seq_len=seq_len)}
    interval = rl.save_every
    compute = {
        "equation": equation, "mean_seq_len": seq_len, "mean_seq_len_source": seq_source,
        "steps": rl.max_steps, "steps_source": "rl.max_steps", "checkpoint_every": interval,
        "cases": [{
            "label": f"K={k:g}", "rounds": k,
            "per_step": _timing(f, devices, peak, request.mfu),
            "per_checkpoint": _timing(interval * f, devices, peak, request.mfu),
            "phase": _timing(rl.max_steps * f, devices, peak, request.mfu),
        } for k, f in step_flops.items()],
    }
    workload = Workload(
        seq_len=max_len, micro_batch=micro, gradient_checkpointing=cfg.model.gradient_checkpointing,
        flash_attention=_flash(cfg), padded=cfg.model.attn_implementation != "flash_attention_2",
        activation_bytes=2 if cfg.engine.precision != "fp32" else 4,
        logits_bytes_per_entry=LOGITS_BYTES_PER_ENTRY if rl.kernels == "unfused" else 0,
        rollout_sequences=rollout_sequences, rollout_seq_len=max_len, reference_model=algo.kl_coef > 0,
    )
    return workload, batch, compute
