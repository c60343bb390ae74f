"""Per-token log-probabilities and entropy of a causal LM, from its full logits or the fused kernels.

The policy's log-probability of a response token is taken at the rollout temperature,
``log softmax(logits / T)[token]``, so that it is comparable with what the rollout engine sampled
from (the ratio of Eq. 3-4 compares two such numbers) and with the rollout's own log-probs (the
drift the RL trainer logs).

Where they come from is the ``kernels`` setting (``sft.kernels``, ``rl.kernels``): ``unfused``
takes them from the model's forward (``[B, S, V]`` logits); ``auto`` (the device layer's choice:
reference on CPU, triton on CUDA, ascend on NPU) or a named implementation from the last hidden
states and the LM head with :mod:`npu_retu.kernels`, never building the logits.
"""

from __future__ import annotations

import torch

from npu_retu import kernels as fused


def kernel_impl(kernels: str) -> str | None:
    """The ``impl`` argument of :mod:`npu_retu.kernels` for a ``kernels`` setting: None lets the
    device layer choose ("auto")."""
    return None if kernels == "auto" else kernels


def token_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    kernels: str = "unfused",
    with_entropy: bool = False,
    entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-prob of every next token ``[B, S-1]`` at ``temperature`` (and its entropy), differentiable,
    from the full logits (``kernels="unfused"``) or the fused kernel; see :func:`response_logprobs`
    for the layout and the entropy's gradient."""
    if kernels == "unfused":
        return response_logprobs(
            model, input_ids, attention_mask, temperature=temperature, with_entropy=with_entropy, entropy_grad=entropy_grad
        )
    hidden, head = hidden_states_and_head(model, input_ids, attention_mask)
    logp, entropy = fused.fused_linear_logprobs(
        hidden[:, :-1], head, input_ids[:, 1:], temperature=temperature, return_entropy=with_entropy, impl=kernel_impl(kernels)
    )
    if entropy is not None and not entropy_grad:
        entropy = entropy.detach()
    return logp, entropy


def selected_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    targets: torch.Tensor,
    keep: torch.Tensor,
    *,
    temperature: float = 1.0,
    kernels: str = "auto",
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """The fused kernel's log-probs of ``targets`` (``[B, S-1]``, the next tokens) at the positions
    where ``keep`` is set, as one flat tensor in row order: only those positions reach the LM head."""
    hidden, head = hidden_states_and_head(model, input_ids, attention_mask, position_ids)
    return fused.fused_linear_logprobs(
        hidden[:, :-1][keep], head, targets[keep], temperature=temperature, impl=kernel_impl(kernels)
    )[0]


def response_token_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    spans: list[tuple[int, int]],
    *,
    temperature: float = 1.0,
    kernels: str = "auto",
) -> list[torch.Tensor]:
    """Each row's response-token log-probs (row ``i``'s response is ``input_ids[i, start:end]`` for
    ``spans[i] = (start, end)``) as 1-D CPU tensors: the old and reference log-probs of the RL update.

    On a fused path only the response positions reach the LM head; ``unfused`` takes them from the
    model's full forward.
    """
    if kernels == "unfused":
        logp, _ = response_logprobs(model, input_ids, attention_mask, temperature=temperature)
        return [logp[row, start - 1 : end - 1].cpu() for row, (start, end) in enumerate(spans)]
    keep = torch.zeros((len(spans), input_ids.shape[1] - 1), dtype=torch.bool, device=input_ids.device)
    for row, (start, end) in enumerate(spans):
        keep[row, start - 1 : end - 1] = True
    logp = selected_logprobs(model, input_ids, attention_mask, input_ids[:, 1:], keep, temperature=temperature, kernels=kernels)
    return list(logp.cpu().split([end - start for start, end in spans]))


def response_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-prob of every next token (``[B, S-1]``, position ``t`` scores ``input_ids[:, t+1]``).

    Rows are right-padded; padded positions carry garbage the caller masks out. ``with_entropy``
    also returns the entropy of each next-token distribution, with a gradient only when
    ``entropy_grad`` (an entropy bonus); otherwise it is a metric.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    return logprobs_from_logits(
        logits[:, :-1, :], input_ids[:, 1:], temperature=temperature, with_entropy=with_entropy, entropy_grad=entropy_grad
    )


def logprobs_from_logits(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``log softmax(logits / T)`` at ``targets`` in fp32, and optionally the entropy."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for log-probs, got {temperature}")
    scaled = logits.float() / temperature
    log_norm = torch.logsumexp(scaled, dim=-1)
    logp = scaled.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - log_norm
    entropy = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            log_p_all = scaled - log_norm.unsqueeze(-1)
            entropy = -(log_p_all.exp() * log_p_all).sum(-1)
    return logp, entropy


def hidden_states_and_head(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids=None):
    """The last hidden states ``[B, S, H]`` (after the final norm) and the LM-head weight ``[V, H]`` of
    a Hugging Face causal LM, for the fused log-prob kernels: ``logits = hidden @ weight.T``.

    A model whose logits are not that product (a head with a bias, logit scaling or soft-capping)
    is refused with a message that says so; ``rl.kernels=unfused`` runs it through its own forward.
    """
    head = model.get_output_embeddings()
    if head is None or not isinstance(getattr(head, "weight", None), torch.Tensor):
        raise ValueError(f"{type(model).__name__} has no LM-head weight for the fused log-prob kernels; set rl.kernels=unfused")
    decoder = model.get_decoder()
    # the model's config, read off the decoder (it shares it): DeepSpeed's engine, which passes the
    # model's methods through, has a config of its own
    config = getattr(decoder, "config", None)
    changes = [name for name in ("final_logit_softcapping", "logit_scale", "logits_scaling") if getattr(config, name, None) not in (None, 1, 1.0)]
    if getattr(head, "bias", None) is not None:
        changes.append("a bias on the LM head")
    if changes:
        raise ValueError(f"{type(model).__name__}'s logits are not hidden @ weight.T ({', '.join(changes)}); set rl.kernels=unfused")
    kwargs = {} if position_ids is None else {"position_ids": position_ids}  # packed sequences restart them
    out = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs)
    return out.last_hidden_state, head.weight
