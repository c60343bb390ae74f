"""Exact chunked PyTorch implementations of the fused ops: the CPU path and the fallback everywhere.

Log-probs of the targets under ``softmax(h W^T / T)`` (the policy's token log-probs at the rollout
temperature, paper Eq. 3-4) are computed in tiles: the tokens in chunks of ``token_chunk`` rows,
each chunk against the vocabulary in tiles of ``vocab_tile`` columns, with an online log-sum-exp
across the tiles. The largest temporary is one ``[token_chunk, vocab_tile]`` fp32 tile; the
``[T, V]`` logits never exist. The backward pass recomputes each tile from the saved hidden states
and the per-token ``lse`` (and entropy), so nothing of size ``V`` per token is kept between passes.

Gradients, with ``z = h W^T / T``, ``p = softmax(z)``, ``lse = log sum exp z`` and
``H = lse - sum p z`` (the entropy):

    d logp / d z_v = [v = y] - p_v
    d H    / d z_v = -p_v (z_v - (lse - H))

and ``dh = dz W / T``, ``dW = dz^T h / T``.

Everything is accumulated in fp32 whatever the input dtype; inputs in bf16 are up-cast one tile at
a time. ``plain_linear_logprobs`` is the unfused baseline (matmul, log-softmax, gather) that the
benchmark compares against.
"""

from __future__ import annotations

import torch
from torch import Tensor

DEFAULT_TOKEN_CHUNK = 1024
DEFAULT_VOCAB_TILE = 8192
# the policy loss's aggregations (npu_retu.algos.agg_loss takes the same, from here)
LOSS_AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")


def plain_linear_logprobs(
    hidden: Tensor, weight: Tensor, targets: Tensor, *, temperature: float = 1.0, return_entropy: bool = False
) -> tuple[Tensor, Tensor | None]:
    """The unfused baseline: ``[T, V]`` logits, then log-softmax in fp32, then gather."""
    logits = (hidden @ weight.T).float() / temperature
    log_probs = torch.log_softmax(logits, dim=-1)
    logp = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1) if return_entropy else None
    return logp, entropy


def check_linear_inputs(hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float) -> None:
    """Shape, dtype and range checks shared by every implementation; errors say what is wrong."""
    if hidden.dim() < 1 or weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} must be [..., H] and weight {tuple(weight.shape)} [V, H] with the same H")
    if targets.shape != hidden.shape[:-1]:
        raise ValueError(f"targets {tuple(targets.shape)} must have the shape of hidden without its last dim {tuple(hidden.shape[:-1])}")
    if targets.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"targets must be int32 or int64 token ids, got {targets.dtype}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= weight.shape[0]):
        raise ValueError(f"targets must lie in [0, {weight.shape[0]}), got [{int(targets.min())}, {int(targets.max())}]")


def _tile_logits(h: Tensor, weight: Tensor, v0: int, v1: int, temperature: float) -> Tensor:
    return (h.float() @ weight[v0:v1].float().T) / temperature


def chunk_stats(
    h: Tensor, weight: Tensor, y: Tensor, temperature: float, vocab_tile: int, with_entropy: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """``(logp, lse, entropy)`` of one token chunk by an online log-sum-exp over vocab tiles.

    ``entropy`` is zeros when ``with_entropy`` is False.
    """
    n, vocab = h.shape[0], weight.shape[0]
    running_max = torch.full((n,), float("-inf"), dtype=torch.float32, device=h.device)
    sum_exp = torch.zeros(n, dtype=torch.float32, device=h.device)
    sum_exp_z = torch.zeros(n, dtype=torch.float32, device=h.device)  # sum e^(z - max) z, for the entropy
    target_logit = torch.zeros(n, dtype=torch.float32, device=h.device)
    for v0 in range(0, vocab, vocab_tile):
        v1 = min(v0 + vocab_tile, vocab)
        z = _tile_logits(h, weight, v0, v1, temperature)
        new_max = torch.maximum(running_max, z.max(dim=1).values)
        rescale = torch.exp(running_max - new_max)  # exp(-inf) = 0 on the first tile
        e = torch.exp(z - new_max[:, None])
        sum_exp = sum_exp * rescale + e.sum(dim=1)
        if with_entropy:
            sum_exp_z = sum_exp_z * rescale + (e * z).sum(dim=1)
        running_max = new_max
        in_tile = (y >= v0) & (y < v1)
        picked = z.gather(1, (y - v0).clamp(0, v1 - v0 - 1).unsqueeze(1)).squeeze(1)
        target_logit = torch.where(in_tile, picked, target_logit)
    lse = running_max + torch.log(sum_exp)
    entropy = lse - sum_exp_z / sum_exp if with_entropy else torch.zeros_like(lse)
    return target_logit - lse, lse, entropy


def chunk_grads(
    h: Tensor,
    weight: Tensor,
    y: Tensor,
    temperature: float,
    vocab_tile: int,
    lse: Tensor,
    entropy: Tensor,
    grad_logp: Tensor,
    grad_entropy: Tensor | None,
    grad_weight: Tensor | None,
    need_grad_hidden: bool,
) -> Tensor | None:
    """Recompute one chunk's tiles and back-propagate: returns ``dh`` (fp32) and adds into ``grad_weight``."""
    grad_h = torch.zeros(h.shape, dtype=torch.float32, device=h.device) if need_grad_hidden else None
    rows = torch.arange(h.shape[0], device=h.device)
    h32 = h.float()
    for v0 in range(0, weight.shape[0], vocab_tile):
        v1 = min(v0 + vocab_tile, weight.shape[0])
        z = _tile_logits(h, weight, v0, v1, temperature)
        p = torch.exp(z - lse[:, None])
        dz = -grad_logp[:, None] * p
        in_tile = (y >= v0) & (y < v1)
        dz[rows[in_tile], y[in_tile] - v0] += grad_logp[in_tile]
        if grad_entropy is not None:
            dz -= grad_entropy[:, None] * p * (z - (lse - entropy)[:, None])
        dz /= temperature
        if grad_h is not None:
            grad_h += dz @ weight[v0:v1].float()
        if grad_weight is not None:
            grad_weight[v0:v1] += dz.T @ h32
    return grad_h


# --------------------------------------------------------------------------------------------
# the clipped policy loss, with its gradient computed in the same pass


def token_weights(
    mask: Tensor,
    agg: str,
    global_token_count: int | float | Tensor | None = None,
    global_seq_count: int | float | Tensor | None = None,
) -> Tensor:
    """Per-token weight ``w`` such that the aggregated loss is ``sum(w * loss)`` (fp32, 0 off the mask).

    The same normalisers as ``npu_retu.algos.agg_loss``: ``token-mean`` divides by the (global)
    token count, ``seq-mean-token-sum`` by the (global) sequence count, ``seq-mean-token-mean`` also
    by each sequence's own token count. The last dimension is the sequence; a zero count divides by 1.
    """
    m = mask.bool()
    w = m.float()
    if agg == "token-mean":
        denom = m.sum() if global_token_count is None else global_token_count
        return w / _at_least_one(denom, w)
    if agg in ("seq-mean-token-sum", "seq-mean-token-mean"):
        tokens = m.sum(dim=-1, keepdim=True)
        denom = (tokens > 0).sum() if global_seq_count is None else global_seq_count
        w = w / _at_least_one(denom, w)
        if agg == "seq-mean-token-mean":
            w = w / tokens.clamp(min=1).float()
        return w
    raise ValueError(f"unknown loss aggregation {agg!r}; choose one of {', '.join(LOSS_AGG_MODES)}")


def _at_least_one(count: int | float | Tensor, like: Tensor) -> Tensor:
    c = torch.as_tensor(count, device=like.device).float()
    return torch.where(c > 0, c, torch.ones_like(c))


def check_loss_settings(clip_low: float, clip_high: float, dual_clip: float | None) -> None:
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (or None), got {dual_clip}")
    if not (0.0 <= clip_low < 1.0) or clip_high < 0.0:
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {clip_low}, {clip_high}")


def policy_loss_terms(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    *,
    clip_low: float,
    clip_high: float,
    dual_clip: float | None,
    log_ratio_clamp: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per token: the clipped loss ``pg`` (Eq. 3 negated, with DAPO's asymmetric clip and dual-clip),
    its derivative ``d pg / d logp``, the ratio and the (clamped) log-ratio; all fp32.

    The derivative is the one autograd gives ``npu_retu.algos.clipped_policy_loss``: ``-A r`` where
    the unclipped term is the one taken (``-A r >= -A clip(r)``), the dual-clip cap is not (``pg <=
    -A c``) and the log-ratio is inside its clamp; 0 elsewhere.
    """
    logp, old_logp, advantages = logp.float(), old_logp.float(), advantages.float()
    raw = logp - old_logp
    log_ratio = raw.clamp(-log_ratio_clamp, log_ratio_clamp)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    pg = torch.maximum(unclipped, clipped)
    passes = (unclipped >= clipped) & (raw.abs() <= log_ratio_clamp)
    if dual_clip is not None:
        cap = -advantages * dual_clip
        capped = (advantages < 0) & (pg > cap)
        pg = torch.where(advantages < 0, torch.minimum(pg, cap), pg)
        passes = passes & ~capped
    grad = torch.where(passes, -advantages * ratio, torch.zeros_like(ratio))
    return pg, grad, ratio, log_ratio


LOSS_SUM_FIELDS = ("loss", "tokens", "clip_upper", "clip_lower", "dual_clip", "ratio", "approx_kl")


def loss_sums(
    pg: Tensor, ratio: Tensor, log_ratio: Tensor, advantages: Tensor, weights: Tensor, mask: Tensor,
    *, clip_low: float, clip_high: float, dual_clip: float | None,
) -> Tensor:
    """The sums behind the loss and its metrics, in the order of ``LOSS_SUM_FIELDS`` (fp64)."""
    m = mask.bool()
    zero = torch.zeros((), dtype=torch.float64, device=pg.device)
    a, r, lr = advantages.double(), ratio.double(), log_ratio.double()

    def count(cond: Tensor) -> Tensor:
        return (cond & m).sum().double()

    return torch.stack([
        torch.where(m, weights.double() * pg.double(), zero).sum(),
        m.sum().double(),
        count((a > 0) & (r > 1.0 + clip_high)),
        count((a < 0) & (r < 1.0 - clip_low)),
        count((a < 0) & (r > dual_clip)) if dual_clip is not None else zero,
        torch.where(m, r, zero).sum(),
        torch.where(m, r - 1.0 - lr, zero).sum(),
    ])


def metrics_from_sums(sums: Tensor) -> dict[str, float]:
    """``npu_retu.algos.clipped_policy_loss``'s metric names from ``loss_sums``."""
    s = dict(zip(LOSS_SUM_FIELDS, sums.tolist()))
    n = s["tokens"]

    def mean(key: str) -> float:
        return s[key] / n if n else 0.0

    return {
        "clipfrac_upper": mean("clip_upper"),
        "clipfrac_lower": mean("clip_lower"),
        "clipfrac": mean("clip_upper") + mean("clip_lower"),
        "dual_clip_frac": mean("dual_clip"),
        "approx_kl": mean("approx_kl"),
        "ratio_mean": mean("ratio"),
        "tokens": float(n),
    }


def prepare_loss_inputs(
    logprobs, old_logprobs, advantages, mask, agg, global_token_count, global_seq_count, clip_low, clip_high, dual_clip
) -> tuple[Tensor, Tensor, Tensor]:
    """Checks shapes and settings; returns ``(old_logprobs, per-token advantages, token weights)``."""
    check_loss_settings(clip_low, clip_high, dual_clip)
    if logprobs.shape != old_logprobs.shape or logprobs.shape != mask.shape:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)}, old_logprobs {tuple(old_logprobs.shape)} and mask {tuple(mask.shape)} must match"
        )
    if advantages.dim() == 1 and logprobs.dim() == 2:
        advantages = advantages[:, None].expand_as(logprobs)
    if advantages.shape != logprobs.shape:
        raise ValueError(f"advantages {tuple(advantages.shape)} must be [B] or [B, T] like logprobs {tuple(logprobs.shape)}")
    weights = token_weights(mask, agg, global_token_count, global_seq_count)
    return old_logprobs.detach().float(), advantages.detach().float(), weights


class TorchTiles:
    """The tile operations of the fused ops in PyTorch: what ``logprobs.py`` / ``policy_loss.py`` drive.

    ``stats`` / ``grads`` are one token chunk's forward and (recomputing) backward;
    ``stats_then_grads`` is both at once for a loss whose per-token gradient is known as soon as the
    log-probs are (the fused policy loss). ``loss_terms`` is the clipped policy loss per token.
    """

    name = "reference"

    def __init__(self, token_chunk: int = DEFAULT_TOKEN_CHUNK, vocab_tile: int = DEFAULT_VOCAB_TILE):
        if token_chunk < 1 or vocab_tile < 1:
            raise ValueError(f"token_chunk and vocab_tile must be >= 1, got {token_chunk}, {vocab_tile}")
        self.token_chunk = token_chunk
        self.vocab_tile = vocab_tile

    def stats(self, h, weight, y, temperature, with_entropy):
        return chunk_stats(h, weight, y, temperature, self.vocab_tile, with_entropy)

    def grads(self, h, weight, y, temperature, lse, entropy, grad_logp, grad_entropy, grad_weight, need_grad_hidden):
        return chunk_grads(
            h, weight, y, temperature, self.vocab_tile, lse, entropy, grad_logp, grad_entropy, grad_weight, need_grad_hidden
        )

    def stats_then_grads(self, h, weight, y, temperature, with_entropy, grad_of_logp, grad_weight, need_grad_hidden):
        logp, lse, entropy = self.stats(h, weight, y, temperature, with_entropy)
        grad_logp = grad_of_logp(logp)
        grad_h = self.grads(h, weight, y, temperature, lse, entropy, grad_logp, None, grad_weight, need_grad_hidden)
        return logp, entropy, grad_h

    def grad_weight_dtype(self, weight: Tensor) -> torch.dtype:
        """dW accumulates in fp32, one tile at a time."""
        return torch.float32

    def loss_terms(self, logp, old_logp, advantages, weights, mask, *, clip_low, clip_high, dual_clip, log_ratio_clamp):
        """``(weighted gradient w.r.t. logp, sums in LOSS_SUM_FIELDS order)`` for 1-D token arrays."""
        pg, grad, ratio, log_ratio = policy_loss_terms(
            logp, old_logp, advantages,
            clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip, log_ratio_clamp=log_ratio_clamp,
        )
        sums = loss_sums(pg, ratio, log_ratio, advantages, weights, mask, clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip)
        m = mask.bool()
        return torch.where(m, weights * grad, torch.zeros_like(grad)), sums
