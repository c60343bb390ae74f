"""The fused kernels against an fp64 oracle: every output and gradient, odd shapes, every implementation.

The oracle is the plain computation in float64 (matmul, log-softmax, gather; the clipped loss by
autograd through ``npu_retu.algos.clipped_policy_loss``). Shapes are chosen to hit the edges: one
token, a prime token count, a vocabulary that is not a multiple of the tile, masked tokens holding
inf / nan, temperature != 1. The Triton kernels run on Triton's CPU interpreter here (conftest sets
``TRITON_INTERPRET=1`` where no GPU is present) and compiled for real on a GPU; ``ascend`` runs the
same kernels with a capped grid (the persistent row loop its launch depends on).
"""

from __future__ import annotations

import importlib.util
import logging

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from npu_retu.algos import clipped_policy_loss as algos_loss
from npu_retu.kernels import (
    clipped_policy_loss,
    fused_linear_logprobs,
    fused_linear_policy_loss,
    get_tiles,
    plain_linear_logprobs,
    resolve_impl,
)

HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (pip install -e .[triton])")

# (impl, tile sizes): small tiles so that every loop runs several times at tiny shapes
IMPLS = [
    pytest.param("reference", {"token_chunk": 5, "vocab_tile": 32}, id="reference"),
    pytest.param("triton", {"token_chunk": 5, "block_v": 32}, id="triton", marks=needs_triton),
    pytest.param("ascend", {"token_chunk": 5, "block_v": 32, "max_programs": 3}, id="ascend-grid3", marks=needs_triton),
]
# per-dtype tolerances (atol on log-probs / entropy, rtol+atol on gradients)
TOL = {torch.float32: dict(value=2e-5, grad_rtol=1e-4, grad_atol=1e-5), torch.bfloat16: dict(value=2e-5, grad_rtol=2e-2, grad_atol=2e-2)}


def oracle_logprobs(hidden, weight, targets, temperature):
    """fp64 log-probs and entropy from the (already rounded) inputs."""
    logits = hidden.double() @ weight.double().T / temperature
    log_probs = torch.log_softmax(logits, dim=-1)
    return log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1), -(log_probs.exp() * log_probs).sum(-1)


def make_inputs(tokens, hidden_size, vocab, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(tokens, hidden_size, generator=g).to(dtype)
    weight = (torch.randn(vocab, hidden_size, generator=g) * 0.5).to(dtype)
    targets = torch.randint(0, vocab, (tokens,), generator=g)
    return hidden, weight, targets


@pytest.mark.parametrize("impl,tiles", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("tokens,vocab,temperature", [(1, 97, 1.0), (13, 97, 0.7), (17, 64, 1.3)])
def test_logprobs_entropy_and_gradients_match_fp64(impl, tiles, dtype, tokens, vocab, temperature):
    hidden, weight, targets = make_inputs(tokens, 16, vocab, dtype)
    g = torch.Generator().manual_seed(1)
    grad_logp, grad_entropy = torch.randn(tokens, generator=g), torch.randn(tokens, generator=g)

    h64 = hidden.double().requires_grad_()
    w64 = weight.double().requires_grad_()
    want_logp, want_entropy = oracle_logprobs(h64, w64, targets, temperature)
    want_gh, want_gw = torch.autograd.grad((want_logp * grad_logp.double() + want_entropy * grad_entropy.double()).sum(), [h64, w64])

    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    logp, entropy = fused_linear_logprobs(h, w, targets, temperature=temperature, return_entropy=True, impl=impl, **tiles)
    gh, gw = torch.autograd.grad((logp * grad_logp + entropy * grad_entropy).sum(), [h, w])

    tol = TOL[dtype]
    assert logp.dtype == torch.float32 and logp.shape == (tokens,)
    assert (logp.double() - want_logp).abs().max() < tol["value"]
    assert (entropy.double() - want_entropy).abs().max() < tol["value"]
    assert gh.dtype == dtype and gw.dtype == dtype
    torch.testing.assert_close(gh.double(), want_gh, rtol=tol["grad_rtol"], atol=tol["grad_atol"])
    torch.testing.assert_close(gw.double(), want_gw, rtol=tol["grad_rtol"], atol=tol["grad_atol"])


@pytest.mark.parametrize("impl,tiles", IMPLS)
def test_no_grad_path_keeps_no_graph_and_accepts_batched_shapes(impl, tiles):
    hidden, weight, targets = make_inputs(12, 8, 50, torch.float32, seed=3)
    hidden, targets = hidden.view(3, 4, 8), targets.view(3, 4)
    hidden.requires_grad_()
    with torch.no_grad():
        logp, entropy = fused_linear_logprobs(hidden, weight, targets, temperature=0.7, impl=impl, **tiles)
    assert entropy is None and logp.grad_fn is None and logp.shape == (3, 4)
    want, _ = oracle_logprobs(hidden.detach(), weight, targets, 0.7)
    assert (logp.double() - want).abs().max() < 2e-5


@pytest.mark.parametrize("impl,tiles", IMPLS)
def test_log_probs_gradient_alone_needs_no_entropy(impl, tiles):
    hidden, weight, targets = make_inputs(7, 8, 40, torch.float32, seed=4)
    h = hidden.clone().requires_grad_()
    logp, _ = fused_linear_logprobs(h, weight, targets, impl=impl, **tiles)
    (gh,) = torch.autograd.grad(logp.sum(), [h])
    h64 = hidden.double().requires_grad_()
    (want,) = torch.autograd.grad(oracle_logprobs(h64, weight.double(), targets, 1.0)[0].sum(), [h64])
    torch.testing.assert_close(gh.double(), want, rtol=1e-4, atol=1e-5)


def loss_inputs(seed=0, batch=4, width=9):
    """Log-probs and old log-probs spread so that every clip branch is hit: clip-high, clip-low,
    dual-clip (ratio > 10 with A < 0), the log-ratio clamp, plus masked tokens that hold inf / nan."""
    g = torch.Generator().manual_seed(seed)
    logp = torch.randn(batch, width, generator=g, dtype=torch.float64) * 0.5 - 1.0
    old = logp + torch.randn(batch, width, generator=g, dtype=torch.float64) * 0.4
    old[0, 1] = logp[0, 1] - 3.0  # ratio e^3 = 20 > 10
    old[1, 2] = logp[1, 2] - 25.0  # outside the log-ratio clamp
    advantages = torch.tensor([-1.0, -0.5, 0.8, 1.2], dtype=torch.float64)[:batch]
    mask = (torch.rand(batch, width, generator=g) > 0.25).double()
    mask[0, 1] = mask[1, 2] = 1.0
    mask[2, 0] = 0.0
    old[2, 0] = float("nan")  # masked-out garbage must not reach any sum
    mask[3] = 0.0  # a sequence with no response tokens
    return logp, old, advantages, mask


@pytest.mark.parametrize("impl,tiles", IMPLS)
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"])
@pytest.mark.parametrize("global_counts", [False, True])
def test_clipped_policy_loss_matches_the_algos_loss(impl, tiles, agg, global_counts):
    logp, old, advantages, mask = loss_inputs()
    counts = {"global_token_count": 40, "global_seq_count": 7} if global_counts else {}
    settings = dict(clip_low=0.2, clip_high=0.28, dual_clip=10.0)

    lp64 = logp.clone().requires_grad_()
    want, want_metrics = algos_loss(lp64, old, advantages, mask, clip_low=0.2, clip_high=0.28, dual_clip=10.0, agg=agg, **counts)
    (want_grad,) = torch.autograd.grad(want, [lp64])

    lp = logp.float().requires_grad_()
    loss, metrics = clipped_policy_loss(lp, old.float(), advantages.float(), mask.float(), agg=agg, impl=impl, **settings, **counts, **tiles)
    (grad,) = torch.autograd.grad(loss, [lp])

    assert want_metrics["dual_clip_frac"] > 0 and want_metrics["clipfrac"] > 0  # the branches were hit
    assert float(loss.detach()) == pytest.approx(float(want.detach()), rel=1e-6, abs=1e-6)
    torch.testing.assert_close(grad.double(), want_grad, rtol=1e-5, atol=1e-6)
    assert set(metrics) == set(want_metrics)
    for key in want_metrics:
        assert metrics[key] == pytest.approx(want_metrics[key], rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize("impl,tiles", IMPLS)
def test_policy_loss_without_dual_clip_and_with_symmetric_clip(impl, tiles):
    logp, old, advantages, mask = loss_inputs(seed=2)
    lp64 = logp.clone().requires_grad_()
    want, _ = algos_loss(lp64, old, advantages, mask, clip_low=0.2, clip_high=0.2, dual_clip=None)
    (want_grad,) = torch.autograd.grad(want, [lp64])
    lp = logp.float().requires_grad_()
    loss, metrics = clipped_policy_loss(lp, old.float(), advantages.float(), mask.float(), clip_low=0.2, clip_high=0.2, dual_clip=None, impl=impl, **tiles)
    (grad,) = torch.autograd.grad(loss, [lp])
    assert float(loss.detach()) == pytest.approx(float(want.detach()), rel=1e-6, abs=1e-6) and metrics["dual_clip_frac"] == 0.0
    torch.testing.assert_close(grad.double(), want_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl,tiles", IMPLS)
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_fused_linear_policy_loss_matches_logprobs_then_loss_in_fp64(impl, tiles, agg):
    batch, width, hidden_size, vocab = 4, 9, 12, 71
    g = torch.Generator().manual_seed(7)
    hidden = torch.randn(batch, width, hidden_size, generator=g)
    weight = torch.randn(vocab, hidden_size, generator=g) * 0.5
    targets = torch.randint(0, vocab, (batch, width), generator=g)
    _, old, advantages, mask = loss_inputs(seed=5, batch=batch, width=width)
    with torch.no_grad():
        current, _ = oracle_logprobs(hidden.view(-1, hidden_size), weight, targets.view(-1), 0.7)
    old = current.view(batch, width) + torch.randn(batch, width, generator=g, dtype=torch.float64) * 0.3
    old[2, 0] = float("inf")  # masked out

    h64, w64 = hidden.double().requires_grad_(), weight.double().requires_grad_()
    logp64, entropy64 = oracle_logprobs(h64.view(-1, hidden_size), w64, targets.view(-1), 0.7)
    want, want_metrics = algos_loss(logp64.view(batch, width), old, advantages, mask, agg=agg, global_token_count=30)
    want_gh, want_gw = torch.autograd.grad(want, [h64, w64])
    want_entropy = float((entropy64.detach().view(batch, width) * mask).sum() / mask.sum())

    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss, metrics = fused_linear_policy_loss(
        h, w, targets, old.float(), advantages.float(), mask.float(), temperature=0.7, agg=agg, global_token_count=30,
        return_entropy=True, impl=impl, **tiles,
    )
    gh, gw = torch.autograd.grad(loss * 2.0, [h, w])  # the incoming gradient scales the stored ones

    assert float(loss.detach()) == pytest.approx(float(want.detach()), rel=1e-6, abs=1e-6)
    torch.testing.assert_close(gh.double(), 2 * want_gh, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gw.double(), 2 * want_gw, rtol=1e-4, atol=1e-6)
    assert gh[3].abs().max() == 0  # a row with no response tokens gets no gradient
    assert metrics["entropy"] == pytest.approx(want_entropy, abs=1e-5)
    for key in want_metrics:
        assert metrics[key] == pytest.approx(want_metrics[key], rel=1e-5, abs=1e-6), key


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op produces (element count)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_fused_path_never_builds_token_by_vocab_logits():
    tokens, hidden_size, vocab, chunk, tile = 256, 32, 1000, 64, 128
    hidden, weight, targets = make_inputs(tokens, hidden_size, vocab, torch.float32)
    hidden.requires_grad_()
    weight.requires_grad_()
    with LargestTensor() as fused:
        logp, entropy = fused_linear_logprobs(hidden, weight, targets, return_entropy=True, impl="reference", token_chunk=chunk, vocab_tile=tile)
        (logp.sum() + entropy.sum()).backward()
    with LargestTensor() as plain:
        plain_logp, _ = plain_linear_logprobs(hidden, weight, targets)
    # the biggest things the fused path holds: the weight and its gradient (V*H), hidden (T*H), one tile
    assert fused.largest == max(vocab * hidden_size, tokens * hidden_size, chunk * tile)
    assert plain.largest == tokens * vocab
    torch.testing.assert_close(logp.detach(), plain_logp.detach(), rtol=0, atol=2e-5)


def test_dispatch_follows_the_device_layer_and_rejects_unknown_names():
    from npu_retu.device import Backend, reset_backend, set_backend

    class FakeAccelerator:
        pass

    try:
        set_backend(Backend("cuda", accelerator=FakeAccelerator()))
        assert resolve_impl() == "triton"
        set_backend(Backend("npu", accelerator=FakeAccelerator()))
        assert resolve_impl() == "ascend"
        set_backend("cpu")
        assert resolve_impl() == "reference"
    finally:
        reset_backend()
    with pytest.raises(ValueError, match="unknown kernel implementation 'cutlass'; choose one of reference, triton, ascend"):
        resolve_impl("cutlass")


def test_bad_inputs_get_clear_errors():
    hidden, weight, targets = make_inputs(4, 8, 10, torch.float32)
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 10\), got \[.*12\]"):
        fused_linear_logprobs(hidden, weight, torch.tensor([0, 1, 2, 12]), impl="reference")
    with pytest.raises(ValueError, match="same H"):
        fused_linear_logprobs(hidden, weight[:, :4], targets, impl="reference")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        fused_linear_logprobs(hidden, weight, targets, temperature=0.0, impl="reference")
    logp, old, adv, mask = loss_inputs()
    with pytest.raises(ValueError, match="dual_clip"):
        clipped_policy_loss(logp, old, adv, mask, dual_clip=0.5, impl="reference")
    with pytest.raises(ValueError, match="unknown loss aggregation 'mean'"):
        clipped_policy_loss(logp, old, adv, mask, agg="mean", impl="reference")


def test_ascend_falls_back_to_pytorch_tiles_with_the_reason(monkeypatch, caplog):
    from npu_retu.kernels import ascend

    monkeypatch.setattr(ascend, "interpreting", lambda: False)
    monkeypatch.setattr(ascend, "unavailable_reason", lambda: "torch_npu not importable: No module named 'torch_npu'")
    with caplog.at_level(logging.WARNING):
        tiles = get_tiles("ascend")
    assert tiles.backend == "reference"
    assert "torch_npu not importable" in caplog.text
    hidden, weight, targets = make_inputs(5, 8, 30, torch.float32)
    logp, _ = fused_linear_logprobs(hidden, weight, targets, impl="ascend")
    assert (logp.double() - oracle_logprobs(hidden, weight, targets, 1.0)[0]).abs().max() < 2e-5


def documented_online_max_sum(input, weight, target, vocab_start_index, vocab_end_index, return_logits=False):
    """aclnnFusedLinearOnlineMaxSum as CANN's kernel computes it (no NPU here: the injected operator
    of the wiring tests): per row the logits' max, sum(exp(logit - max)), the target's logit - max
    (0 outside [start, end): the kernel's ``target >= end``, not the documentation's ``> end``),
    the packed out-of-range mask and the shifted target."""
    logits = input.float() @ weight.float().T
    logits_max = logits.max(dim=-1).values
    shifted = logits - logits_max[:, None]
    outside = (target < vocab_start_index) | (target >= vocab_end_index)
    masked_target = torch.where(outside, torch.zeros_like(target), target - vocab_start_index)
    predicted = torch.where(outside, torch.zeros_like(logits_max), shifted.gather(-1, masked_target[:, None]).squeeze(-1))
    bits = torch.ones(-(-len(target) // 8) * 8, dtype=torch.uint8)
    bits[: len(target)] = outside.to(torch.uint8)
    packed = (bits.view(-1, 8) << torch.arange(8, dtype=torch.uint8)).sum(-1).to(torch.uint8)
    return logits_max, shifted.exp().sum(-1), predicted, packed, masked_target, logits.to(input.dtype) if return_logits else None


class CountingOp:
    def __init__(self):
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return documented_online_max_sum(*args, **kwargs)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_ascend_forward_takes_cann_fused_op_for_bf16_log_probs(monkeypatch, temperature):
    """bf16 log-probs without entropy go to CANN's operator one token chunk at a time; their
    backward (from the lse it gave) matches fp64; entropy or fp32 take the tiles instead."""
    from npu_retu.kernels import ascend
    from npu_retu.kernels.logprobs import linear_logprobs

    monkeypatch.setattr(ascend, "interpreting", lambda: False)
    monkeypatch.setattr(ascend, "unavailable_reason", lambda: "triton-ascend not importable: (test)")
    op = CountingOp()
    tiles = ascend.AscendTiles(token_chunk=5, cann_op=op)
    hidden, weight, targets = make_inputs(13, 16, 97, torch.bfloat16)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    logp, _ = linear_logprobs(tiles, h, w, targets, temperature=temperature)
    assert op.calls == 3  # 13 tokens in chunks of 5
    want, _ = oracle_logprobs(hidden, weight, targets, temperature)
    assert (logp.double() - want).abs().max() < 2e-2  # h / T is rounded to bf16 before the operator
    logp.sum().backward()
    hd, wd = hidden.double().requires_grad_(), weight.double().requires_grad_()
    oracle_logprobs(hd, wd, targets, temperature)[0].sum().backward()
    torch.testing.assert_close(h.grad.double(), hd.grad, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(w.grad.double(), wd.grad, rtol=2e-2, atol=2e-2)

    linear_logprobs(tiles, hidden, weight, targets, temperature=temperature, return_entropy=True)
    linear_logprobs(tiles, hidden.float(), weight.float(), targets, temperature=temperature)
    assert op.calls == 3  # neither went to the operator


def test_the_documented_operator_gives_the_log_softmax():
    hidden, weight, targets = make_inputs(9, 8, 40, torch.float32)
    logits_max, sum_exp, predicted, packed, masked, _ = documented_online_max_sum(hidden, weight, targets, 0, 40)
    want, _ = oracle_logprobs(hidden, weight, targets, 1.0)
    assert ((predicted - sum_exp.log()).double() - want).abs().max() < 2e-5
    assert packed.shape == (2,) and torch.equal(masked, targets)  # (9 + 7) // 8 mask bytes; every target in range


def test_cann_forward_passes_an_exclusive_vocab_end_so_the_last_row_counts():
    from npu_retu.kernels.ascend.cann import CannLogprobs

    hidden, weight, _ = make_inputs(4, 8, 30, torch.bfloat16)
    targets = torch.full((4,), 29)  # the last row of the vocabulary
    logp, _, _ = CannLogprobs(documented_online_max_sum).stats(hidden, weight, targets, 1.0)
    assert (logp.double() - oracle_logprobs(hidden, weight, targets, 1.0)[0]).abs().max() < 2e-2


def test_cann_operator_lookup_names_what_is_missing():
    from types import SimpleNamespace

    from npu_retu.kernels.ascend.cann import find_online_max_sum

    op, where = find_online_max_sum(SimpleNamespace(npu_fused_linear_online_max_sum=documented_online_max_sum))
    assert op is documented_online_max_sum and where == "torch_npu.npu_fused_linear_online_max_sum"
    op, where = find_online_max_sum(SimpleNamespace(fused_linear_online_max_sum=documented_online_max_sum))
    assert where == "torch_npu.fused_linear_online_max_sum"
    op, where = find_online_max_sum(SimpleNamespace(__version__="2.5.1"))
    assert op is None and where == ("torch_npu 2.5.1 has no npu_fused_linear_online_max_sum or fused_linear_online_max_sum "
                                    "(torch_npu before its v7.2 line)")


@needs_triton
def test_ascend_switches_to_pytorch_tiles_when_a_kernel_fails_to_compile(caplog):
    from triton.compiler.errors import CompilationError

    from npu_retu.kernels.ascend import AscendTiles

    tiles = AscendTiles(token_chunk=4, block_v=32, max_programs=2)
    assert tiles.backend == "triton"

    def broken(*args, **kwargs):
        raise CompilationError("kernel.py", None, "ub overflow")

    tiles._tiles.stats = broken
    hidden, weight, targets = make_inputs(5, 8, 30, torch.float32)
    with caplog.at_level(logging.WARNING):
        logp = tiles.stats(hidden, weight, targets, 1.0, False)[0]
    assert tiles.backend == "reference" and "failed to compile" in caplog.text
    assert (logp.double() - oracle_logprobs(hidden, weight, targets, 1.0)[0]).abs().max() < 2e-5


@pytest.mark.gpu
@pytest.mark.parametrize("hidden_size,vocab", [(3584, 152064)])
def test_triton_parity_at_the_qwen_head_shape_in_bf16(hidden_size, vocab):
    """Compiled Triton kernels at the Qwen2.5-7B head shape in bf16 vs an fp32 computation."""
    from npu_retu.device import get_backend

    device = get_backend().device()
    g = torch.Generator(device=device).manual_seed(0)
    hidden = torch.randn(512, hidden_size, device=device, generator=g).bfloat16()
    weight = (torch.randn(vocab, hidden_size, device=device, generator=g) * 0.02).bfloat16()
    targets = torch.randint(0, vocab, (512,), device=device, generator=g)
    want_logp, want_entropy = oracle_logprobs(hidden.float(), weight.float(), targets, 1.0)
    logp, entropy = fused_linear_logprobs(hidden, weight, targets, return_entropy=True, impl="triton")
    assert (logp.double() - want_logp).abs().max() < 5e-3
    assert (entropy.double() - want_entropy).abs().max() < 5e-3


def test_bench_kernels_saves_a_csv_with_times_memory_and_errors(tmp_path, capsys):
    import csv

    from npu_retu.cli import main

    out = tmp_path / "kernels.csv"
    assert main(["bench", "kernels", "--ops", "logprobs", "--shapes", "32:300", "--tokens", "16,40", "--repeats", "2",
                 "--impls", "fused-reference,plain,fused-triton", "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0].startswith("# TFLOP/s count the LM-head matmuls only")
    rows = list(csv.DictReader(lines[1:]))
    assert [(r["impl"], r["tokens"], r["mode"]) for r in rows[:2]] == [("fused-reference", "16", "forward"), ("fused-reference", "16", "forward+backward")]
    assert len(rows) == 12
    measured = [r for r in rows if r["impl"] != "fused-triton"]
    assert all(r["status"] == "ok" for r in measured)
    for r in measured:
        assert float(r["p20_ms"]) <= float(r["median_ms"]) <= float(r["p80_ms"])
        assert float(r["max_err_logp"]) < 1e-5 and float(r["tflops"]) > 0
    assert all(float(r["max_err_dh"]) < 1e-5 for r in measured if r["mode"] == "forward+backward")
    assert all(r["status"].startswith("skipped: no accelerator") for r in rows if r["impl"] == "fused-triton")
    assert "saved 12 rows" in capsys.readouterr().out
    assert main(["bench", "kernels", "--impls", "cutlass", "--out", str(out)]) == 2
    assert "unknown implementation(s) cutlass; choose from cut-cross-entropy, fused-ascend, fused-reference" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is None, reason="liger-kernel is not installed (the triton extra brings it)")
def test_bench_kernels_policy_loss_rows_agree_with_fp64_and_liger(tmp_path, capsys):
    """The policy-loss op: ours (fused, plain) and Liger's GRPO loss with the same clip, each against
    the float64 clipped loss on a sub-batch; Liger's Triton cross-entropy says exactly why it is skipped."""
    import csv

    from npu_retu.cli import main

    out = tmp_path / "kernels.csv"
    assert main(["bench", "kernels", "--shapes", "24:200", "--tokens", "32", "--repeats", "2", "--dtype", "float32",
                 "--impls", "fused-reference,plain,liger-grpo,liger", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.read_text().splitlines()[1:]))
    loss_rows = {r["impl"]: r for r in rows if r["op"] == "policy-loss"}
    assert set(loss_rows) == {"fused-reference", "plain", "liger-grpo"}
    for r in loss_rows.values():
        assert r["status"] == "ok" and r["mode"] == "forward+backward"
        assert float(r["max_err_logp"]) < 1e-6 and float(r["max_err_dh"]) < 1e-6  # the loss and dh vs fp64
    liger = [r for r in rows if r["impl"] == "liger"]
    assert len(liger) == 2 and all(r["status"].startswith("skipped: liger-kernel ") and "this device is cpu" in r["status"] for r in liger)
    assert main(["bench", "kernels", "--ops", "loss", "--out", str(out)]) == 2
    assert "unknown op(s) loss; choose from logprobs, policy-loss" in capsys.readouterr().err


def test_bench_kernels_stops_at_its_time_limit(tmp_path):
    from npu_retu.bench.kernels import run_kernel_bench

    rows = run_kernel_bench([(16, 50)], [8, 16], "float32", ["plain"], 1, ops=("logprobs",), max_seconds=0.0, log=lambda _: None,
                            out_csv=str(tmp_path / "k.csv"))
    assert [r["status"] for r in rows] == ["not run: time limit (0 s) reached"] * 4
    assert len((tmp_path / "k.csv").read_text().splitlines()) == 6  # the note, the header and the 4 rows
