"""Per-token log-probabilities and entropy of a causal LM's responses.

The policy's log-probability of a response token is taken at the rollout temperature,
``log softmax(logits / T)[token]``, so that it is comparable with what the rollout engine sampled
from (the ratio of Eq. 3-4 compares two such numbers) and with the rollout's own log-probs (the
drift the RL trainer logs).
"""

from __future__ import annotations

import torch


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
    config = getattr(model, "config", None)
    if head is None or not isinstance(getattr(head, "weight", None), torch.Tensor):
        raise ValueError(f"{type(model).__name__} has no LM-head weight for the fused log-prob kernels; set rl.kernels=unfused")
    changes = [name for name in ("final_logit_softcapping", "logit_scale", "logits_scaling") if getattr(config, name, None) not in (None, 1, 1.0)]
    if getattr(head, "bias", None) is not None:
        changes.append("a bias on the LM head")
    if changes:
        raise ValueError(f"{type(model).__name__}'s logits are not hidden @ weight.T ({', '.join(changes)}); set rl.kernels=unfused")
    kwargs = {} if position_ids is None else {"position_ids": position_ids}  # packed sequences restart them
    out = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs)
    return out.last_hidden_state, head.weight
