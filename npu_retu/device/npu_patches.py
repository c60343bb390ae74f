"""Optional torch_npu fused ops for the decoder blocks of transformers' Qwen2 and Llama models.

On an Ascend backend, :func:`apply_fused_ops` swaps three hot spots of every decoder block for the
fused kernels that torch_npu documents, keeping the math of the Hugging Face code:

* ``Qwen2RMSNorm`` / ``LlamaRMSNorm``  → ``torch_npu.npu_rms_norm(x, weight, epsilon)[0]``
* ``Qwen2MLP`` / ``LlamaMLP`` (SiLU)   → ``down_proj(torch_npu.npu_swiglu(cat([gate_proj(x), up_proj(x)], -1), dim=-1))``
* rotary embedding in the attention    → ``torch_npu.npu_rotary_mul(x, cos, sin)`` for q and k

Only torch_npu ops are used. MindSpeed's wrappers (``mindspeed.ops.npu_rotary_position_embedding``,
its fused swiglu) call the same CANN kernels and were not confirmed against a source we could read
here, so they are not used even when MindSpeed is installed.

How it patches, so that a CUDA or CPU model in the same process is untouched:

* norms and MLPs: a bound ``forward`` is set on each *instance*; the classes are not modified.
* rotary: HF's attention ``forward`` calls the module-level ``apply_rotary_pos_emb`` of its modeling
  file. That name is replaced once by a thin dispatcher which calls the original function unless a
  context variable is set; only the forward of a *patched* attention instance sets it, for the
  duration of its own call (gradient-checkpoint recomputation goes through the same forward). Any
  other model, and any call outside a patched attention, runs HF's function unchanged.

Every fused call is guarded by the documented constraints of its op (dtype, rank, layout, sizes); a
call outside them runs HF's code instead, so the patch never changes which inputs work.

Sources (Ascend "PyTorch API reference", torch_npu custom ops, hiascend.com):
  npu_rms_norm   https://www.hiascend.com/document/detail/zh/Pytorch/700/apiref/apilist/ptaoplist_000860.html
  npu_swiglu     https://www.hiascend.com/document/detail/zh/Pytorch/720/apiref/torchnpuCustomsapi/context/（beta）torch_npu-npu_swiglu.md
  npu_rotary_mul https://www.hiascend.com/document/detail/zh/Pytorch/700/apiref/apilist/ptaoplist_001217.html
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import sys
import types
from typing import Any, Callable

logger = logging.getLogger(__name__)

FUSED_OPS = ("npu_rms_norm", "npu_swiglu", "npu_rotary_mul")

# model family -> (transformers modeling module, class-name prefix)
_ARCHITECTURES = {
    "qwen2": ("transformers.models.qwen2.modeling_qwen2", "Qwen2"),
    "llama": ("transformers.models.llama.modeling_llama", "Llama"),
}

_PATCH_MARK = "_npu_retu_fused_op"  # set on each patched module instance: which op it now uses

# npu_rotary_mul (half mode, jit_compile=False, Atlas A2/A3): D even and < 896; B, N < 1000;
# B*N <= 1024 when cos/sin need gradients; cos/sin in [-1, 1]
_ROTARY_MAX_HEAD_DIM = 896
_ROTARY_MAX_BATCH_OR_HEADS = 1000
_ROTARY_MAX_BN_WITH_GRAD = 1024

# the fused rotary implementation for the attention call in progress (None: run HF's function)
_ACTIVE_ROTARY: contextvars.ContextVar[Callable | None] = contextvars.ContextVar("npu_retu_active_rotary", default=None)
_logged_fallbacks: set[tuple[str, str]] = set()


def fused_ops_available(torch_npu: Any) -> dict[str, bool]:
    """Which of the fused ops this ``torch_npu`` module provides (all False for None)."""
    return {op: callable(getattr(torch_npu, op, None)) for op in FUSED_OPS}


def apply_fused_ops(model: Any, backend: Any, *, torch_npu: Any = None) -> list[str]:
    """Patch the RMSNorm, SwiGLU MLP and rotary embedding of a Qwen2 / Llama model with torch_npu ops.

    Does nothing and returns ``[]`` unless ``backend.name == "npu"``. ``torch_npu`` defaults to the
    module the backend loaded (``backend.extension``), else it is imported. An op missing from an
    older torch_npu skips that patch with a warning naming the op; a model with no Qwen2 / Llama
    blocks returns ``[]`` with an info line. Modules patched by an earlier call are left as they are.

    Returns what was patched, e.g. ``["rms_norm x57", "swiglu x28", "rotary x28"]`` (the rotary count
    is attention modules; each applies the op to q and to k).

    Call it on the freshly loaded model, before DeepSpeed wraps it. Numerics: in fp32 the fused
    forwards compute what HF computes. In bf16/fp16, HF's RMSNorm rounds the normalised activations
    to the input dtype before multiplying by the weight, the kernel rounds once at the end: the
    results differ by at most about one unit in the last place of bf16.
    """
    if getattr(backend, "name", None) != "npu":
        return []
    if torch_npu is None:
        torch_npu = getattr(backend, "extension", None)
    if torch_npu is None:
        try:
            import torch_npu as imported  # noqa: PLC0415 (only on Ascend)
        except ImportError as e:
            logger.warning("fused ops not applied: torch_npu not importable: %s", e)
            return []
        torch_npu = imported

    blocks = _find_blocks(model)
    if not blocks:
        logger.info("fused ops not applied: %s has no Qwen2 / Llama decoder blocks", type(model).__name__)
        return []

    available = fused_ops_available(torch_npu)
    applied: list[str] = []
    for label, op, patch in (
        ("rms_norm", "npu_rms_norm", _patch_rms_norms),
        ("swiglu", "npu_swiglu", _patch_mlps),
        ("rotary", "npu_rotary_mul", _patch_rotary),
    ):
        if not available[op]:
            logger.warning("fused %s not applied: torch_npu.%s is missing (torch_npu too old?)", label, op)
            continue
        count = sum(patch(found, torch_npu) for found in blocks)
        if count:
            applied.append(f"{label} x{count}")
    if applied:
        logger.info("fused torch_npu ops applied: %s", ", ".join(applied))
    return applied


# ---- finding the blocks ------------------------------------------------------------------------


class _Blocks:
    """The modules of one architecture found in a model, and that architecture's modeling module."""

    def __init__(self, modeling: types.ModuleType, prefix: str, model: Any):
        self.modeling = modeling
        modules = list(model.modules())

        def instances(suffix: str) -> list:
            cls = getattr(modeling, prefix + suffix, None)
            return [m for m in modules if cls is not None and isinstance(m, cls)]

        self.norms = instances("RMSNorm")
        self.mlps = instances("MLP")
        self.attentions = instances("Attention")
        self.rotary_embeddings = instances("RotaryEmbedding")

    def __bool__(self) -> bool:
        return bool(self.norms or self.mlps or self.attentions)


def _find_blocks(model: Any) -> list[_Blocks]:
    found = []
    for module_path, prefix in _ARCHITECTURES.values():
        # a model built from these classes has imported their module; never import one here
        modeling = sys.modules.get(module_path)
        if modeling is not None:
            blocks = _Blocks(modeling, prefix, model)
            if blocks:
                found.append(blocks)
    return found


def _set_forward(module: Any, forward: Callable, op: str) -> None:
    # an instance attribute shadows the class's forward for this module only; a bound method
    # (not a closure over `module`) stays correct through copy.deepcopy of the model
    module.forward = types.MethodType(forward, module)
    setattr(module, _PATCH_MARK, op)


def _fallback(op: str, reason: str) -> None:
    if (op, reason) not in _logged_fallbacks:
        _logged_fallbacks.add((op, reason))
        logger.info("torch_npu.%s skipped for a call (%s): running the transformers code", op, reason)


def _float_dtypes() -> tuple:
    import torch

    return (torch.float16, torch.bfloat16, torch.float32)


# ---- RMSNorm -------------------------------------------------------------------------------------


def _patch_rms_norms(blocks: _Blocks, torch_npu: Any) -> int:
    def forward(self, hidden_states):
        # npu_rms_norm: x and gamma of the same dtype, fp16/bf16/fp32, 2-8 dims (docs above)
        if hidden_states.dtype != self.weight.dtype:
            # HF promotes (e.g. fp32 weight x bf16 activations gives fp32): keep its result dtype
            _fallback("npu_rms_norm", "input and weight dtypes differ")
            return type(self).forward(self, hidden_states)
        if hidden_states.dtype not in _float_dtypes() or not 2 <= hidden_states.dim() <= 8:
            _fallback("npu_rms_norm", "dtype or rank outside the documented range")
            return type(self).forward(self, hidden_states)
        return torch_npu.npu_rms_norm(hidden_states, self.weight, epsilon=self.variance_epsilon)[0]

    count = 0
    for norm in blocks.norms:
        if getattr(norm, _PATCH_MARK, None) is None:
            _set_forward(norm, forward, "npu_rms_norm")
            count += 1
    return count


# ---- SwiGLU MLP ----------------------------------------------------------------------------------

# npu_swiglu(x, dim) splits x in halves A, B along dim and returns swish(A) * B = A * sigmoid(A) * B,
# "A表示前半部分张量，B表示后半部分张量" (A is the first half, B the second): so the gate projection goes
# first. Source: hiascend.com, PyTorch 7.2.0 API reference, "(beta) torch_npu.npu_swiglu"; the
# same order is used by LLaMA-Factory (third_party/npu_fused_ops/swiglu.py) and MindSpeed
# (core/fusions/fused_bias_swiglu.py). Input: fp32/fp16/bf16, 1-8 dims, contiguous, non-empty.
_SILU_NAMES = ("silu", "swish")


def _patch_mlps(blocks: _Blocks, torch_npu: Any) -> int:
    import torch

    def forward(self, x):
        gate, up = self.gate_proj(x), self.up_proj(x)
        if gate.dtype not in _float_dtypes() or gate.dtype != up.dtype or not 1 <= gate.dim() <= 8 or gate.numel() == 0:
            _fallback("npu_swiglu", "dtype, rank or size outside the documented range")
            return self.down_proj(self.act_fn(gate) * up)
        return self.down_proj(torch_npu.npu_swiglu(torch.cat((gate, up), dim=-1), dim=-1))

    count = 0
    for mlp in blocks.mlps:
        if getattr(mlp, _PATCH_MARK, None) is not None:
            continue
        act = getattr(getattr(mlp, "config", None), "hidden_act", None)
        if act not in _SILU_NAMES:
            logger.warning("fused swiglu not applied to %s: activation is %r, not SiLU", type(mlp).__name__, act)
            continue
        _set_forward(mlp, forward, "npu_swiglu")
        count += 1
    return count


# ---- rotary embedding ----------------------------------------------------------------------------

# npu_rotary_mul(x, r1, r2), half mode (the default): x1, x2 = chunk(x, 2, -1);
# out = r1 * x + r2 * cat(-x2, x1). That is HF's `q * cos + rotate_half(q) * sin` with r1 = cos,
# r2 = sin, both given as 4-D tensors that broadcast against x. HF's attention holds q, k as
# [B, N, S, D] and cos, sin as [B|1, S, D]: unsqueezed at dim 1 they are B1SD / 11SD, documented
# layouts for BNSD input. Constraints (Atlas A2/A3, jit_compile=False): D even and < 896, B and N
# < 1000, B*N <= 1024 when cos/sin need gradients, cos/sin within [-1, 1]; for BNSD input with D
# not 32-byte aligned the docs advise the unfused path (slower otherwise).
# Source: hiascend.com, PyTorch 7.0.0 API reference, "torch_npu.npu_rotary_mul".


def _patch_rotary(blocks: _Blocks, torch_npu: Any) -> int:
    attentions = [a for a in blocks.attentions if getattr(a, _PATCH_MARK, None) is None]
    if not attentions:
        return 0
    calls_global = {
        "apply_rotary_pos_emb" in inspect.unwrap(type(a).forward).__code__.co_names for a in attentions
    }
    if calls_global != {True} or not callable(getattr(blocks.modeling, "apply_rotary_pos_emb", None)):
        logger.warning(
            "fused rotary not applied: this transformers version's %s does not call apply_rotary_pos_emb",
            type(attentions[0]).__name__,
        )
        return 0
    too_large = [e.attention_scaling for e in blocks.rotary_embeddings if getattr(e, "attention_scaling", 1.0) > 1.0]
    if too_large:
        # cos/sin are scaled by attention_scaling (yarn, longrope); npu_rotary_mul takes values in [-1, 1]
        logger.warning("fused rotary not applied: rope attention_scaling %s puts cos/sin outside [-1, 1]", too_large[0])
        return 0

    _install_rotary_dispatcher(blocks.modeling)
    fused = functools.partial(_fused_rotary, torch_npu=torch_npu)

    def forward(self, *args, **kwargs):
        token = _ACTIVE_ROTARY.set(fused)
        try:
            return type(self).forward(self, *args, **kwargs)
        finally:
            _ACTIVE_ROTARY.reset(token)

    for attention in attentions:
        _set_forward(attention, forward, "npu_rotary_mul")
    return len(attentions)


def _install_rotary_dispatcher(modeling: types.ModuleType) -> None:
    original = modeling.apply_rotary_pos_emb
    if getattr(original, "_npu_retu_dispatcher", False):
        return

    @functools.wraps(original)
    def apply_rotary_pos_emb(q, k, cos, sin, *args, **kwargs):
        fused = _ACTIVE_ROTARY.get()
        if fused is None:  # not inside a patched attention: HF's function, unchanged
            return original(q, k, cos, sin, *args, **kwargs)
        return fused(original, q, k, cos, sin, *args, **kwargs)

    apply_rotary_pos_emb._npu_retu_dispatcher = True
    modeling.apply_rotary_pos_emb = apply_rotary_pos_emb


def _fused_rotary(original: Callable, q, k, cos, sin, *args, torch_npu: Any, **kwargs):
    unsqueeze_dim = kwargs.get("unsqueeze_dim", args[0] if len(args) == 1 else 1)
    if len(args) > 1 or set(kwargs) - {"unsqueeze_dim"} or unsqueeze_dim != 1:
        _fallback("npu_rotary_mul", "call signature or layout other than [B, N, S, D]")
        return original(q, k, cos, sin, *args, **kwargs)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    reason = _rotary_unsupported(q, cos, sin) or _rotary_unsupported(k, cos, sin)
    if reason:
        _fallback("npu_rotary_mul", reason)
        return original(q, k, cos.squeeze(1), sin.squeeze(1), unsqueeze_dim=1)
    return torch_npu.npu_rotary_mul(q, cos, sin), torch_npu.npu_rotary_mul(k, cos, sin)


def _rotary_unsupported(x, cos, sin) -> str | None:
    """Why npu_rotary_mul(x [B, N, S, D], cos, sin) is outside its documented range (None: it is not)."""
    if x.dim() != 4 or cos.dim() != 4 or cos.shape != sin.shape:
        return "not 4-D"
    if not (x.dtype == cos.dtype == sin.dtype) or x.dtype not in _float_dtypes():
        return "dtypes differ or are not fp16/bf16/fp32"
    batch, heads, seq, dim = x.shape
    if cos.shape[0] not in (1, batch) or cos.shape[1] != 1 or tuple(cos.shape[2:]) != (seq, dim):
        return f"cos/sin shape {tuple(cos.shape)} is not 11SD or B1SD for x {tuple(x.shape)}"
    if dim % 2 or dim >= _ROTARY_MAX_HEAD_DIM:
        return f"head dim {dim} is odd or >= {_ROTARY_MAX_HEAD_DIM}"
    if batch >= _ROTARY_MAX_BATCH_OR_HEADS or heads >= _ROTARY_MAX_BATCH_OR_HEADS:
        return f"batch {batch} or heads {heads} >= {_ROTARY_MAX_BATCH_OR_HEADS}"
    if (cos.requires_grad or sin.requires_grad) and batch * heads > _ROTARY_MAX_BN_WITH_GRAD:
        return f"cos/sin need gradients and batch*heads > {_ROTARY_MAX_BN_WITH_GRAD}"
    if (dim * x.element_size()) % 32:
        return "head dim not 32-byte aligned (the docs advise the unfused path)"
    if x.numel() == 0:
        return "empty tensor"
    return None
