"""DAPO's dynamic sampling: drop groups whose rewards are all equal, draw again until the batch is full.

A group where every rollout got the same reward (all correct or all wrong with RETU's binary
reward) has advantage 0 everywhere (Eq. 2) and contributes no gradient; DAPO (Yu et al. 2025)
filters it out and keeps generating. As RETU ran it (DESIGN, Appendix B.2, C.2): a step draws
generation batches of 128 prompts until 64 kept prompts fill the train batch, at most 10 draws;
when the budget runs out it trains on what was kept (possibly nothing: the trainer then skips the
update) and logs it. GRPO is the same loop with the filter off: one draw, every group kept.

Nothing here knows about models: ``draw_fn(d)`` is any callable that returns generation batch ``d``
(0, 1, ...) as a list of :class:`Group`; the filter looks only at their rewards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import Tensor

if TYPE_CHECKING:
    from npu_retu.rollout import Trajectory


@dataclass
class Group:
    """One prompt's ``G`` rollouts with their rewards and group advantages (Eq. 2): what dynamic
    sampling keeps or drops, and what the policy update trains on."""

    prompt_index: int  # into the RL prompts
    prompt_ids: list[int]
    trajectories: list[Trajectory]  # G of them
    rewards: list[float]  # one per trajectory
    advantages: list[float] = field(default_factory=list)  # one per trajectory, once the rewards are in


@dataclass
class RolloutBatch:
    """One RL step's samples: the groups to train on, every group generated, and how the filter went."""

    kept: list[Group]  # at most train_batch_prompts, in draw order
    generated: list[Group]  # every group of every draw (the step's rollout metrics and compute)
    stats: dict[str, Any]  # draws, groups_generated, groups_kept, groups_used, kept_fraction, budget_exhausted


def keep_mask(rewards: Tensor | Sequence[float], group_size: int) -> Tensor:
    """DAPO's filter: keep a group iff its rewards are not all equal (group std > 0).

    With binary rewards: 1..G-1 of G correct. ``rewards`` is flat ``[num_groups * G]`` (consecutive
    runs of ``group_size``) or ``[num_groups, G]``; returns a bool tensor ``[num_groups]``.
    """
    r = torch.as_tensor(rewards, dtype=torch.float64)
    if r.dim() == 1:
        if group_size < 1 or r.numel() % group_size != 0:
            raise ValueError(f"group size {group_size} does not divide the {r.numel()} rewards")
        r = r.reshape(-1, group_size)
    elif r.dim() != 2 or r.shape[1] != group_size:
        raise ValueError(f"rewards must be [num_groups * {group_size}] or [num_groups, {group_size}], got {tuple(r.shape)}")
    if r.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool)
    # max > min is exactly "std > 0" without a float threshold.
    return r.amax(dim=1) > r.amin(dim=1)


def fill_batch(
    draw_fn: Callable[[int], Sequence[Group]],
    train_batch_prompts: int,
    max_draws: int,
    group_size: int,
    filter: bool = True,
) -> RolloutBatch:
    """Fill a train batch of ``train_batch_prompts`` groups with DAPO's dynamic sampling.

    Calls ``draw_fn(0)``, ``draw_fn(1)``, ... (one generation batch each: groups with ``rewards`` of
    length ``group_size``) until the groups kept by :func:`keep_mask` number at least
    ``train_batch_prompts`` or ``max_draws`` draws were made; keeps the first
    ``train_batch_prompts`` in draw order. With ``filter=False`` (GRPO): one draw, every group kept.
    Never raises for running short: returns what was kept (maybe ``[]``) and
    ``budget_exhausted = True``.

    The stats are a plain dict for the step's metrics: ``draws``, ``groups_generated``,
    ``groups_kept`` (passed the filter, over all draws, before truncation), ``groups_used`` (returned),
    ``kept_fraction`` (kept / generated, the filter's pass rate) and ``budget_exhausted`` (bool:
    ``max_draws`` draws did not fill the batch).
    """
    if train_batch_prompts < 1:
        raise ValueError(f"train_batch_prompts must be >= 1, got {train_batch_prompts}")
    if max_draws < 1:
        raise ValueError(f"max_draws must be >= 1, got {max_draws}")
    draws = 0
    generated: list[Group] = []
    kept: list[Group] = []
    while draws < (max_draws if filter else 1):
        batch = list(draw_fn(draws))
        draws += 1
        generated.extend(batch)
        if not batch:
            continue
        if filter:  # (without it a group may differ in size: UPT's expert-only groups)
            for g in batch:
                if len(g.rewards) != group_size:
                    raise ValueError(f"draw {draws}: a group has {len(g.rewards)} rewards, expected group_size={group_size}")
            mask = keep_mask(torch.stack([torch.as_tensor(g.rewards, dtype=torch.float64) for g in batch]), group_size)
            kept.extend(g for g, k in zip(batch, mask.tolist()) if k)
            if len(kept) >= train_batch_prompts:
                break
        else:
            kept.extend(batch)
    groups_kept = len(kept)
    exhausted = filter and groups_kept < train_batch_prompts
    if filter:
        kept = kept[:train_batch_prompts]
    stats = {
        "draws": draws,
        "groups_generated": len(generated),
        "groups_kept": groups_kept,
        "groups_used": len(kept),
        "kept_fraction": groups_kept / len(generated) if generated else 0.0,
        "budget_exhausted": exhausted,
    }
    return RolloutBatch(kept=kept, generated=generated, stats=stats)
