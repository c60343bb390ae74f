"""Parity of the fused kernels on the device at hand against a CPU float64 computation.

``npu-retu doctor`` runs these so that a user can check the kernels on their own node (an Ascend
user in particular, where this project's CI has no hardware). Each check returns the same
``{name, device, max_abs_err, tolerance, ok}`` record as doctor's other checks; gradient errors are
relative to the largest entry of the reference gradient.
"""

from __future__ import annotations

from typing import Any

# (log-probs / entropy / loss: absolute; gradients: relative to their largest entry)
TOLERANCE = {"float32": {"value": 1e-4, "grad": 1e-4}, "bfloat16": {"value": 5e-2, "grad": 3e-2}}
SHAPE = {"tokens": 37, "hidden": 64, "vocab": 1000, "temperature": 0.7}


def kernel_parity_checks(device: Any, impl: str, dtype_name: str) -> list[dict[str, Any]]:
    """Run the three fused ops with implementation ``impl`` on ``device`` in ``dtype_name``."""
    import torch

    from npu_retu.algos import clipped_policy_loss as algos_loss
    from npu_retu.kernels import clipped_policy_loss, fused_linear_logprobs, fused_linear_policy_loss

    dtype = getattr(torch, dtype_name)
    tol = TOLERANCE[dtype_name]
    n, h_size, vocab, temp = SHAPE["tokens"], SHAPE["hidden"], SHAPE["vocab"], SHAPE["temperature"]
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, h_size, generator=g).to(dtype)
    weight = (torch.randn(vocab, h_size, generator=g) * 0.3).to(dtype)
    targets = torch.randint(0, vocab, (n,), generator=g)
    grad_in = torch.randn(n, generator=g, dtype=torch.float64)
    tag = f"{impl} {dtype_name}"

    # fp64 reference on the CPU, from the same (rounded) inputs
    h64, w64 = hidden.double().requires_grad_(), weight.double().requires_grad_()
    log_probs = torch.log_softmax(h64 @ w64.T / temp, dim=-1)
    want_logp = log_probs.gather(-1, targets[:, None]).squeeze(-1)
    want_entropy = -(log_probs.exp() * log_probs).sum(-1)
    want_gh, want_gw = torch.autograd.grad((want_logp * grad_in).sum() + want_entropy.sum(), [h64, w64], retain_graph=True)

    h = hidden.to(device).requires_grad_()
    w = weight.to(device).requires_grad_()
    logp, entropy = fused_linear_logprobs(h, w, targets.to(device), temperature=temp, return_entropy=True, impl=impl)
    gh, gw = torch.autograd.grad((logp * grad_in.float().to(device)).sum() + entropy.sum(), [h, w])
    checks = [
        _check(f"logprobs {tag}", device, _abs_err(logp, want_logp), tol["value"]),
        _check(f"entropy {tag}", device, _abs_err(entropy, want_entropy), tol["value"]),
        _check(f"logprobs d/dh (rel.) {tag}", device, _rel_err(gh, want_gh), tol["grad"]),
        _check(f"logprobs d/dW (rel.) {tag}", device, _rel_err(gw, want_gw), tol["grad"]),
    ]

    # the clipped loss on [B, T] log-probs, and the fused linear loss from the same hidden states
    batch, width = 1, n
    old = (want_logp.detach() + torch.randn(n, generator=g, dtype=torch.float64) * 0.3).view(batch, width)
    advantages = torch.tensor([0.7], dtype=torch.float64)
    mask = (torch.rand(batch, width, generator=g) > 0.2).double()
    lp64 = want_logp.detach().view(batch, width).clone().requires_grad_()
    want_loss, _ = algos_loss(lp64, old, advantages, mask)
    (want_grad,) = torch.autograd.grad(want_loss, [lp64])
    lp = want_logp.detach().float().view(batch, width).to(device).requires_grad_()
    loss, _ = clipped_policy_loss(lp, old.float().to(device), advantages.float().to(device), mask.float().to(device), impl=impl)
    (grad,) = torch.autograd.grad(loss, [lp])
    checks.append(_check(f"policy loss {tag}", device, abs(float(loss.detach()) - float(want_loss.detach())), 1e-5))
    checks.append(_check(f"policy loss d/dlogp (rel.) {tag}", device, _rel_err(grad, want_grad), 1e-5))

    want_fused, _ = algos_loss(want_logp.view(batch, width), old, advantages, mask)
    want_fgh, want_fgw = torch.autograd.grad(want_fused, [h64, w64])
    loss, _ = fused_linear_policy_loss(
        h.view(batch, width, h_size), w, targets.view(batch, width).to(device), old.float().to(device),
        advantages.float().to(device), mask.float().to(device), temperature=temp, impl=impl,
    )
    fgh, fgw = torch.autograd.grad(loss, [h, w])
    checks.append(_check(f"linear policy loss {tag}", device, abs(float(loss.detach()) - float(want_fused.detach())), tol["value"]))
    checks.append(_check(f"linear policy loss d/dh (rel.) {tag}", device, _rel_err(fgh, want_fgh), tol["grad"]))
    checks.append(_check(f"linear policy loss d/dW (rel.) {tag}", device, _rel_err(fgw, want_fgw), tol["grad"]))
    return checks


def _abs_err(got, want) -> float:
    return float((got.detach().cpu().double() - want.detach()).abs().max())


def _rel_err(got, want) -> float:
    scale = float(want.detach().abs().max()) or 1.0
    return _abs_err(got, want) / scale


def _check(name: str, device: Any, err: float, tolerance: float) -> dict[str, Any]:
    return {"name": name, "device": str(device), "max_abs_err": err, "tolerance": tolerance, "ok": err <= tolerance}
