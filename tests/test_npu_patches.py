"""The torch_npu fused-op patches (npu_retu.device.npu_patches), on CPU with a fake torch_npu.

The fake ops implement the semantics *documented* for torch_npu (hiascend.com PyTorch API reference),
written from those docs rather than from transformers' code, and they enforce the documented input
constraints, so a patched forward that passed the wrong layout or dtype would fail here.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from npu_retu.device.npu_patches import FUSED_OPS, apply_fused_ops, fused_ops_available

LAYERS = 2
TOL = 1e-5


class FakeTorchNpu:
    """torch_npu's three fused ops in plain torch (differentiable), counting their calls."""

    def __init__(self, missing: tuple[str, ...] = ()):
        self.calls: Counter = Counter()
        for op in missing:
            setattr(self, op, None)  # as if absent: not callable

    def npu_rms_norm(self, x, gamma, epsilon=1e-6):
        # RmsNorm(x)_i = x_i / Rms(x) * g_i, Rms(x) = sqrt(mean(x^2) + eps); returns (y, rstd);
        # x and gamma share one dtype in {fp16, bf16, fp32}
        assert x.dtype == gamma.dtype and x.dtype in (torch.float16, torch.bfloat16, torch.float32)
        self.calls["npu_rms_norm"] += 1
        xf = x.float()
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + epsilon)
        return (xf * rstd * gamma.float()).to(x.dtype), rstd

    def npu_swiglu(self, x, dim=-1):
        # A, B = halves of x along dim (A first); out = swish(A) * B = A * sigmoid(A) * B
        assert x.is_contiguous() and x.numel() > 0 and x.shape[dim] % 2 == 0
        self.calls["npu_swiglu"] += 1
        a, b = torch.chunk(x, 2, dim=dim)
        return a * torch.sigmoid(a) * b

    def npu_rotary_mul(self, x, r1, r2, rotary_mode="half"):
        # half mode: x1, x2 = chunk(x, 2, -1); out = r1 * x + r2 * cat(-x2, x1); 4-D inputs,
        # r1/r2 in a documented layout for x [B, N, S, D]: 11SD, B1SD or BNSD
        assert rotary_mode == "half" and x.dim() == r1.dim() == r2.dim() == 4
        batch, heads, seq, dim = x.shape
        assert r1.shape == r2.shape and r1.shape[0] in (1, batch) and r1.shape[1] in (1, heads)
        assert tuple(r1.shape[2:]) == (seq, dim)
        self.calls["npu_rotary_mul"] += 1
        x1, x2 = torch.chunk(x, 2, dim=-1)
        return r1 * x + r2 * torch.cat((-x2, x1), dim=-1)


NPU = SimpleNamespace(name="npu")


def _config(kind: str):
    sizes = dict(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )
    return Qwen2Config(**sizes) if kind == "qwen2" else LlamaConfig(**sizes)


def _model(kind: str):
    torch.manual_seed(0)
    cls = Qwen2ForCausalLM if kind == "qwen2" else LlamaForCausalLM
    return cls(_config(kind)).float().eval()


def _loss_and_grads(model, ids):
    """Logits, and gradients of a loss wrt the input embeddings and two parameters."""
    model.zero_grad()
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    out = model(inputs_embeds=embeds, labels=ids)
    out.loss.backward()
    layer = model.model.layers[0]
    return out.logits.detach(), {
        "inputs_embeds": embeds.grad,
        "gate_proj": layer.mlp.gate_proj.weight.grad.clone(),
        "q_proj": layer.self_attn.q_proj.weight.grad.clone(),
        "input_layernorm": layer.input_layernorm.weight.grad.clone(),
    }


IDS = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_patched_model_matches_the_reference_and_calls_each_op(kind):
    reference = _model(kind)
    patched = copy.deepcopy(reference)
    fake = FakeTorchNpu()

    applied = apply_fused_ops(patched, NPU, torch_npu=fake)

    assert applied == [f"rms_norm x{2 * LAYERS + 1}", f"swiglu x{LAYERS}", f"rotary x{LAYERS}"]
    ref_logits, ref_grads = _loss_and_grads(reference, IDS)
    assert fake.calls == {}  # the unpatched model in the same process uses none of them
    logits, grads = _loss_and_grads(patched, IDS)
    # one forward: 2 norms per layer + the final one, one MLP per layer, rotary on q and on k
    assert fake.calls == {"npu_rms_norm": 2 * LAYERS + 1, "npu_swiglu": LAYERS, "npu_rotary_mul": 2 * LAYERS}
    torch.testing.assert_close(logits, ref_logits, atol=TOL, rtol=TOL)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=TOL, rtol=TOL, msg=lambda m: f"{name}: {m}")

    # an unpatched model of the same family still runs transformers' code (rotary dispatcher inert)
    fake.calls.clear()
    again, _ = _loss_and_grads(reference, IDS)
    assert fake.calls == {}
    torch.testing.assert_close(again, ref_logits, atol=0, rtol=0)


def test_patches_hold_under_gradient_checkpointing_and_generation():
    reference, patched = _model("qwen2"), _model("qwen2")
    fake = FakeTorchNpu()
    apply_fused_ops(patched, NPU, torch_npu=fake)
    for model in (reference, patched):
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
    ref_logits, ref_grads = _loss_and_grads(reference, IDS)
    logits, grads = _loss_and_grads(patched, IDS)
    # forward + recomputation in backward, per decoder layer; the final norm is not checkpointed
    assert fake.calls["npu_rotary_mul"] == 2 * (2 * LAYERS)
    assert fake.calls["npu_rms_norm"] == 2 * (2 * LAYERS) + 1
    torch.testing.assert_close(logits, ref_logits, atol=TOL, rtol=TOL)
    torch.testing.assert_close(grads["q_proj"], ref_grads["q_proj"], atol=TOL, rtol=TOL)

    # cached generation (q of length 1 against cos/sin of the new position) gives the same tokens
    for model in (reference, patched):
        model.eval()
    prompt = IDS[:1, :5]
    kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(patched.generate(prompt, **kwargs), reference.generate(prompt, **kwargs))


@pytest.mark.parametrize("name", ["cpu", "cuda"])
def test_other_backends_touch_nothing(name):
    model = _model("llama")
    before = copy.deepcopy(model)
    fake = FakeTorchNpu()

    assert apply_fused_ops(model, SimpleNamespace(name=name), torch_npu=fake) == []
    assert not any("forward" in vars(m) for m in model.modules())
    logits, _ = _loss_and_grads(model, IDS)
    expected, _ = _loss_and_grads(before, IDS)
    assert fake.calls == {}
    torch.testing.assert_close(logits, expected, atol=0, rtol=0)


def test_a_missing_op_skips_only_its_patch_with_a_warning(caplog):
    reference = _model("qwen2")
    patched = copy.deepcopy(reference)
    fake = FakeTorchNpu(missing=("npu_swiglu",))

    with caplog.at_level(logging.WARNING, logger="npu_retu.device.npu_patches"):
        applied = apply_fused_ops(patched, NPU, torch_npu=fake)

    assert applied == [f"rms_norm x{2 * LAYERS + 1}", f"rotary x{LAYERS}"]
    assert any("npu_swiglu" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert all("forward" not in vars(layer.mlp) for layer in patched.model.layers)
    logits, _ = _loss_and_grads(patched, IDS)
    assert fake.calls == {"npu_rms_norm": 2 * LAYERS + 1, "npu_rotary_mul": 2 * LAYERS}
    torch.testing.assert_close(logits, _loss_and_grads(reference, IDS)[0], atol=TOL, rtol=TOL)


def test_unknown_architecture_returns_nothing_and_says_so(caplog):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    with caplog.at_level(logging.INFO, logger="npu_retu.device.npu_patches"):
        assert apply_fused_ops(model, NPU, torch_npu=FakeTorchNpu()) == []
    assert any("no Qwen2 / Llama" in r.getMessage() for r in caplog.records)


def test_applying_twice_does_not_wrap_twice():
    model, fake = _model("llama"), FakeTorchNpu()
    assert apply_fused_ops(model, NPU, torch_npu=fake)
    assert apply_fused_ops(model, NPU, torch_npu=fake) == []
    _loss_and_grads(model, IDS)
    assert fake.calls == {"npu_rms_norm": 2 * LAYERS + 1, "npu_swiglu": LAYERS, "npu_rotary_mul": 2 * LAYERS}


def test_calls_outside_the_documented_range_run_the_transformers_code():
    model, fake = _model("llama"), FakeTorchNpu()
    apply_fused_ops(model, NPU, torch_npu=fake)
    norm = model.model.norm
    x = torch.randn(2, 3, 64, dtype=torch.bfloat16)
    # fp32 weight with bf16 input: npu_rms_norm needs equal dtypes; HF promotes to fp32
    out = norm(x)
    assert fake.calls == {} and out.dtype == torch.float32
    torch.testing.assert_close(out, type(norm).forward(norm, x), atol=0, rtol=0)

    from npu_retu.device.npu_patches import _rotary_unsupported

    q = torch.randn(2, 4, 8, 16)
    cos = torch.randn(1, 1, 8, 16)
    assert _rotary_unsupported(q, cos, cos) is None
    assert _rotary_unsupported(q, torch.randn(1, 8, 1, 16), torch.randn(1, 8, 1, 16))  # 1S1D is for BSND x
    assert _rotary_unsupported(torch.randn(2, 4, 8, 18), torch.randn(1, 1, 8, 18), torch.randn(1, 1, 8, 18))  # 72 B
    assert _rotary_unsupported(torch.randn(1000, 1, 1, 16), torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16))
    assert _rotary_unsupported(q.half(), cos, cos)  # mixed dtypes


def test_rope_scaling_above_one_skips_the_rotary_patch(caplog):
    model = _model("llama")
    for emb in [m for m in model.modules() if hasattr(m, "attention_scaling")]:
        emb.attention_scaling = 1.2  # as yarn would: cos/sin leave [-1, 1]
    with caplog.at_level(logging.WARNING, logger="npu_retu.device.npu_patches"):
        applied = apply_fused_ops(model, NPU, torch_npu=FakeTorchNpu())
    assert not any(a.startswith("rotary") for a in applied)
    assert any("attention_scaling" in r.getMessage() for r in caplog.records)


def test_fused_ops_available():
    assert fused_ops_available(None) == {op: False for op in FUSED_OPS}
    assert fused_ops_available(FakeTorchNpu()) == {op: True for op in FUSED_OPS}
    assert fused_ops_available(FakeTorchNpu(missing=("npu_rotary_mul",)))["npu_rotary_mul"] is False
