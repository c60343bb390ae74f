"""The fused kernels compiled for real on a CUDA GPU (``gpu`` marker: skipped without one, run by
``scripts/gpu_check.sh``): outputs and gradients against float64 at the paper's LM-head shapes in
bf16 and fp32, the fused policy loss equal to the unfused computation, and no ``[T, V]`` tensor
(a peak-memory bound that the unfused path breaks)."""

from __future__ import annotations

import pytest
import torch

from npu_retu.algos.policy_loss import clipped_policy_loss
from npu_retu.kernels import fused_linear_logprobs, fused_linear_policy_loss, plain_linear_logprobs

pytestmark = pytest.mark.gpu

HEADS = [pytest.param(3584, 152064, id="qwen2.5-7b"), pytest.param(3072, 128256, id="llama3.2-3b")]
# per-dtype tolerances, in the spirit of Liger's tests: fp32 close to exact; bf16 inputs with fp32
# accumulation, so the error is that of bf16 logits and bf16 gradients
TOL = {
    torch.float32: dict(value=1e-4, grad_rtol=1e-3, grad_atol=1e-5),
    torch.bfloat16: dict(value=2e-2, grad_rtol=5e-2, grad_atol=5e-3),
}
CLIP = dict(clip_low=0.2, clip_high=0.28)


def inputs(tokens, hidden_size, vocab, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    hidden = torch.randn(tokens, hidden_size, device="cuda", generator=g).to(dtype)
    weight = (torch.randn(vocab, hidden_size, device="cuda", generator=g) * 0.02).to(dtype)
    targets = torch.randint(0, vocab, (tokens,), device="cuda", generator=g)
    return hidden, weight, targets


def fp64(hidden, weight, targets, temperature=1.0):
    h = hidden.double().requires_grad_()
    w = weight.double().requires_grad_()
    log_probs = torch.log_softmax(h @ w.T / temperature, dim=-1)
    logp = log_probs.gather(-1, targets[:, None]).squeeze(-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    return h, w, logp, entropy


@pytest.mark.parametrize("hidden_size,vocab", HEADS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_triton_log_probs_entropy_and_gradients_match_fp64(hidden_size, vocab, dtype):
    hidden, weight, targets = inputs(256, hidden_size, vocab, dtype)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    logp, entropy = fused_linear_logprobs(h, w, targets, temperature=0.7, return_entropy=True, impl="triton")
    h64, w64, want_logp, want_entropy = fp64(hidden, weight, targets, 0.7)
    tol = TOL[dtype]
    assert (logp.double() - want_logp).abs().max() < tol["value"]
    assert (entropy.double() - want_entropy).abs().max() < tol["value"]
    (logp.sum() + 0.1 * entropy.sum()).backward()
    (want_logp.sum() + 0.1 * want_entropy.sum()).backward()
    torch.testing.assert_close(h.grad.double(), h64.grad, rtol=tol["grad_rtol"], atol=tol["grad_atol"])
    torch.testing.assert_close(w.grad.double(), w64.grad, rtol=tol["grad_rtol"], atol=tol["grad_atol"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_fused_policy_loss_equals_the_unfused_update(dtype):
    """The fused RL loss (hidden states -> clipped loss, dh and dW in the forward) against logits ->
    log-softmax -> the clipped loss of npu_retu.algos, at the Qwen2.5-7B head."""
    hidden, weight, targets = inputs(512, 3584, 152064, dtype)
    hidden, targets = hidden.view(2, 256, -1), targets.view(2, 256)
    g = torch.Generator(device="cuda").manual_seed(1)
    old = -3.0 + 0.3 * torch.randn(2, 256, device="cuda", generator=g)
    adv = torch.tensor([[1.0], [-1.0]], device="cuda").expand(2, 256)
    mask = (torch.rand(2, 256, device="cuda", generator=g) > 0.1).float()
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss, _ = fused_linear_policy_loss(h1, w1, targets, old, adv, mask, impl="triton", **CLIP)
    loss.backward()
    h2, w2 = hidden.float().clone().requires_grad_(), weight.float().clone().requires_grad_()
    want, _ = clipped_policy_loss(plain_linear_logprobs(h2, w2, targets)[0], old, adv, mask, **CLIP)
    want.backward()
    tol = TOL[dtype]
    assert abs(float(loss) - float(want)) < tol["value"]
    torch.testing.assert_close(h1.grad.float(), h2.grad, rtol=tol["grad_rtol"], atol=tol["grad_atol"])
    torch.testing.assert_close(w1.grad.float(), w2.grad, rtol=tol["grad_rtol"], atol=tol["grad_atol"])


def _peak_above_inputs(fn, *tensors) -> int:
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn(*tensors)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def test_fused_path_allocates_no_token_by_vocab_tensor():
    """Forward + backward at T = 32k on the Qwen2.5-7B head in bf16: the fused path's peak stays
    under half of one bf16 [T, V] tensor (it holds a token chunk's tiles, dh and the fp32 dW); the
    plain path's is above a whole one, so the bound tells the two apart."""
    tokens, hidden_size, vocab = 32768, 3584, 152064
    one_logits = tokens * vocab * 2
    hidden, weight, targets = inputs(tokens, hidden_size, vocab, torch.bfloat16)
    hidden.requires_grad_()
    weight.requires_grad_()

    def fused(h, w, y):
        fused_linear_logprobs(h, w, y, impl="triton")[0].sum().backward()

    def plain(h, w, y):
        plain_linear_logprobs(h, w, y)[0].sum().backward()

    fused_peak = _peak_above_inputs(fused, hidden, weight, targets)
    hidden.grad = weight.grad = None
    plain_peak = _peak_above_inputs(plain, hidden, weight, targets)
    assert fused_peak < one_logits / 2, f"fused peak {fused_peak / 2**30:.2f} GiB vs one [T, V] {one_logits / 2**30:.2f} GiB"
    assert plain_peak > one_logits, f"plain peak {plain_peak / 2**30:.2f} GiB"
