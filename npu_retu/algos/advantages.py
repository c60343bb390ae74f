"""Group-relative advantages (GRPO, paper Eq. 2).

    A_i = (R_i - mean({R_j}_{j=1..G})) / (std({R_j}_{j=1..G}) + eps)        (Eq. 2, "grpo")
    A_i =  R_i - mean({R_j}_{j=1..G})                                        ("grpo_no_std")

Choices, matching verl's ``compute_grpo_outcome_advantage`` (the code RETU ran on):

* ``std`` is the *unbiased* sample std (``torch.std``, divisor G - 1). For G = 8 binary rewards with
  k correct this is sqrt(k (8 - k) / 56), about 7 % larger than the biased one.
* ``eps`` (1e-6) is added to the std, not to the variance. A group whose rewards are all equal gets
  exactly 0 (its numerator is 0 up to rounding); DAPO's dynamic sampling drops such groups anyway.
* A group of size 1 gets advantage 0: there is no baseline to compare with. (verl differs here: it
  uses mean 0 and std 1, i.e. A = R; with ``n >= 2``, which :class:`~npu_retu.config.AlgoConfig`
  requires, the case never arises in training.)

Estimators are registered by name in :data:`ADVANTAGE_ESTIMATORS`; the config picks one with
``algo.adv_estimator``. Every response token of a sequence has the sequence's advantage (Eq. 3's
``A_{i,t} = A_i``): the policy loss broadcasts it.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

AdvantageEstimator = Callable[..., Tensor]

ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {}


def register_advantage_estimator(name: str) -> Callable[[AdvantageEstimator], AdvantageEstimator]:
    """Register ``fn(rewards, groups=None, *, normalize_std=None, eps=1e-6) -> Tensor`` under ``name``."""

    def deco(fn: AdvantageEstimator) -> AdvantageEstimator:
        if name in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        ADVANTAGE_ESTIMATORS[name] = fn
        return fn

    return deco


def get_advantage_estimator(name: str) -> AdvantageEstimator:
    """The estimator registered as ``name``; a ValueError lists the valid names otherwise."""
    try:
        return ADVANTAGE_ESTIMATORS[name]
    except KeyError:
        raise ValueError(f"unknown advantage estimator {name!r}; choose one of {', '.join(sorted(ADVANTAGE_ESTIMATORS))}") from None


def group_advantages(
    rewards: Tensor,
    groups: int | Tensor | None = None,
    *,
    normalize_std: bool = True,
    eps: float = 1e-6,
) -> Tensor:
    """Group-normalised advantages, paper Eq. 2 (GRPO).

    ``rewards`` is either ``[num_groups, G]`` (``groups`` must then be None) or flat ``[N]`` with
    ``groups`` the group size (consecutive runs of ``groups`` items form a group, N a multiple of it)
    or a tensor of ``N`` group ids (any integer labels, any order, groups may differ in size).
    Returns one advantage per reward, in the shape and float dtype of ``rewards``. No gradient flows.
    """
    rewards = torch.as_tensor(rewards)
    out_dtype = rewards.dtype if rewards.is_floating_point() else torch.float32
    r = rewards.detach().to(torch.float64)  # float64: hand-checkable results, no cancellation in the std

    if rewards.dim() == 2:
        if groups is not None:
            raise ValueError("rewards of shape [num_groups, G] carry their groups; pass groups=None")
        ids = torch.arange(r.shape[0], device=r.device).repeat_interleave(r.shape[1])
        flat = r.reshape(-1)
    elif rewards.dim() == 1:
        flat = r
        if isinstance(groups, int) and not isinstance(groups, bool):
            if groups < 1 or flat.numel() % groups != 0:
                raise ValueError(f"group size {groups} does not divide the {flat.numel()} rewards")
            ids = torch.arange(flat.numel() // groups, device=r.device).repeat_interleave(groups)
        elif isinstance(groups, Tensor):
            if groups.shape != flat.shape:
                raise ValueError(f"group ids of shape {tuple(groups.shape)} do not match rewards of shape {tuple(flat.shape)}")
            _, ids = torch.unique(groups, return_inverse=True)
        else:
            raise ValueError("flat rewards need groups= a group size (int) or a tensor of group ids")
    else:
        raise ValueError(f"rewards must be [N] or [num_groups, G], got shape {tuple(rewards.shape)}")

    if flat.numel() == 0:
        return torch.zeros_like(rewards, dtype=out_dtype)
    num = int(ids.max()) + 1
    count = torch.zeros(num, dtype=r.dtype, device=r.device).index_add_(0, ids, torch.ones_like(flat))
    mean = torch.zeros(num, dtype=r.dtype, device=r.device).index_add_(0, ids, flat) / count
    centred = flat - mean[ids]
    if normalize_std:
        sq = torch.zeros(num, dtype=r.dtype, device=r.device).index_add_(0, ids, centred * centred)
        std = torch.sqrt(sq / (count - 1).clamp(min=1))  # unbiased (G - 1) like torch.std
        centred = centred / (std[ids] + eps)
    # All-equal groups (and groups of one) get exactly 0: the float mean of equal values can be off
    # by an ulp, and 0 / (0 + eps) must not become nan when eps = 0.
    big = torch.full((num,), -torch.inf, dtype=r.dtype, device=r.device).scatter_reduce_(0, ids, flat, "amax")
    small = torch.full((num,), torch.inf, dtype=r.dtype, device=r.device).scatter_reduce_(0, ids, flat, "amin")
    centred = torch.where((big > small)[ids], centred, torch.zeros_like(centred))
    return centred.reshape(rewards.shape).to(out_dtype)


@register_advantage_estimator("grpo")
def grpo_advantages(rewards: Tensor, groups: int | Tensor | None = None, *, normalize_std: bool | None = None, eps: float = 1e-6) -> Tensor:
    """GRPO, Eq. 2: ``(R - group mean) / (group std + eps)``; ``normalize_std=False`` drops the std."""
    return group_advantages(rewards, groups, normalize_std=True if normalize_std is None else normalize_std, eps=eps)


@register_advantage_estimator("grpo_no_std")
def grpo_no_std_advantages(rewards: Tensor, groups: int | Tensor | None = None, *, normalize_std: bool | None = None, eps: float = 1e-6) -> Tensor:
    """Eq. 2 without the std division (Dr. GRPO style): ``R - group mean``."""
    if normalize_std:
        raise ValueError("advantage estimator 'grpo_no_std' never divides by the std; use 'grpo' for normalize_std=True")
    return group_advantages(rewards, groups, normalize_std=False, eps=eps)


def advantages_of_group(rewards: list[float], estimator: str = "grpo", normalize_std: bool | None = None) -> list[float]:
    """The advantages of one prompt's group of rollouts (Eq. 2) by the estimator named ``estimator``,
    as floats (computed in float32, as the loss uses them)."""
    group = torch.tensor(rewards, dtype=torch.float32).view(1, -1)
    return get_advantage_estimator(estimator)(group, normalize_std=normalize_std).view(-1).tolist()
