"""The transformers rollout engine: batched, left-padded sampling with a KV cache, in plain PyTorch.

The CPU backend's rollout engine (DESIGN.md, "Backends"), and the reference the vLLM engines are
checked against. The sampling loop is written out here instead of calling ``model.generate`` because
RL needs what ``generate`` does not give directly: the exact log-probability of every sampled token
under ``log_softmax(logits / T)`` (see :mod:`npu_retu.rollout.base`), per-sequence stop strings, and
sampling driven by one seeded ``torch.Generator``.

One batch, step by step::

    prompts, left-padded        [pad pad p p p]      attention_mask [0 0 1 1 1]
    position_ids                [ 0   0 0 1 2]      (pads' positions do not matter: they are masked)
    prefill -> logits of the last prompt token -> sample -> append 1 token per row -> decode step ...

Left padding keeps every row's newest token in the last column, so one forward of shape [B, 1] per
step serves the whole batch. A row that finishes (end-of-sequence token, stop string or
``max_new_tokens``) is dropped from the batch and its KV cache, so it costs no more compute.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F

from npu_retu.device import get_backend
from npu_retu.rollout.base import GenerationStats, SamplingParams, Trajectory

DEFAULT_BATCH_SIZE = 64


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering of ``probs`` [B, V]: keep the smallest set of most likely tokens whose total
    probability reaches ``top_p`` (the most likely token always stays), zero the rest, renormalise."""
    if top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # probability of the more likely tokens
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
    filtered = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return filtered / filtered.sum(dim=-1, keepdim=True)


def sample_next_tokens(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [B], log-probs [B]) for next-token ``logits`` [B, V].

    Greedy (``temperature == 0``) takes the argmax (the first on ties, as ``generate`` does) and
    reports ``log_softmax(logits)``. Otherwise it samples from ``softmax(logits / T)`` after top-p
    filtering and reports the token's ``log_softmax(logits / T)`` without the filtering.
    """
    logits = logits.float()
    if params.greedy:
        tokens = logits.argmax(dim=-1)
        logprobs = F.log_softmax(logits, dim=-1)
    else:
        logprobs = F.log_softmax(logits / params.temperature, dim=-1)
        probs = top_p_filter(logprobs.exp(), params.top_p)
        tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return tokens, logprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


class TransformersRollout:
    """A Hugging Face causal LM as a rollout engine (the :class:`~npu_retu.rollout.base.RolloutEngine`
    protocol).

    ``model`` is sampled from as it is; it may be the trainer's own module (then ``sync_weights(model)``
    has nothing to copy) or a separate copy that ``sync_weights`` loads the trainer's weights into.
    ``batch_size`` is the number of sequences (prompts x samples) decoded together; ``device`` defaults
    to the backend's device and the model is moved there. End-of-sequence ids come from
    ``model.generation_config.eos_token_id`` (else the tokenizer's eos), unless ``eos_token_ids`` is given.
    """

    supports_sleep = False  # it shares memory with the trainer's process; nothing to hand back

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        device: Any = None,
        eos_token_ids: list[int] | None = None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.device = torch.device(device) if device is not None else get_backend().device()
        self.model = model.to(self.device)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.eos_token_ids = list(eos_token_ids) if eos_token_ids is not None else _eos_ids(model, tokenizer)
        if not self.eos_token_ids:
            raise ValueError("no end-of-sequence token: the model's generation_config and the tokenizer name none")
        self.pad_token_id = _pad_id(model, tokenizer, self.eos_token_ids)
        self.last_stats: GenerationStats | None = None
        self.on_batch: Any = None  # called with the number of sequences after each decoded batch (progress)

    # ---- the RolloutEngine protocol -----------------------------------------------------------

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Trajectory]:
        """``params.n`` samples for each prompt (token ids, chat template already applied), prompt-major.

        The same prompts, params (with a seed) and ``batch_size`` give the same samples.
        """
        for index, prompt in enumerate(prompts):
            if not prompt:
                raise ValueError(f"prompt {index} is empty: a prompt needs at least one token")
        rows = [(p, s) for p in range(len(prompts)) for s in range(params.n)]
        generator = torch.Generator(device=self.device)
        seed = params.seed if params.seed is not None else int(torch.randint(0, 2**62, ()).item())
        generator.manual_seed(seed)

        backend = get_backend()
        started = time.perf_counter()
        was_training = self.model.training
        self.model.eval()
        trajectories: list[Trajectory] = []
        try:
            with torch.no_grad():
                for start in range(0, len(rows), self.batch_size):
                    chunk = rows[start : start + self.batch_size]
                    trajectories += self._generate_batch([prompts[p] for p, _ in chunk], chunk, params, generator)
                    if self.on_batch is not None:
                        self.on_batch(len(chunk))
        finally:
            self.model.train(was_training)
        backend.synchronize()
        self.last_stats = GenerationStats.of(len(prompts), trajectories, time.perf_counter() - started)
        return trajectories

    def sync_weights(self, model_or_state_dict: Any) -> None:
        """Sample from the trainer's weights from now on: a module or a state dict.

        The rollout's own module (shared with the trainer) needs no copy. Otherwise every weight is
        copied in place (cast to the rollout's dtype and device); a key the rollout does not have is
        an error, and so is a missing one unless it is tied to a weight that was given (tied embeddings).
        """
        if model_or_state_dict is self.model:
            return
        if isinstance(model_or_state_dict, torch.nn.Module):
            state = model_or_state_dict.state_dict()
        else:
            state = model_or_state_dict
        result = self.model.load_state_dict(state, strict=False)
        missing = [key for key in result.missing_keys if not self._tied_to_loaded(key, state)]
        if result.unexpected_keys or missing:
            raise ValueError(
                f"sync_weights: the weights do not fit the rollout model: unexpected keys "
                f"{result.unexpected_keys[:5]}, missing keys {missing[:5]}"
            )

    def sleep(self) -> None:
        """No-op: this engine has no memory of its own to free (``supports_sleep`` is False)."""

    def wake(self) -> None:
        """No-op (see :meth:`sleep`)."""

    # ---- the sampling loop --------------------------------------------------------------------

    def _generate_batch(
        self,
        prompts: list[list[int]],
        indices: list[tuple[int, int]],
        params: SamplingParams,
        generator: torch.Generator,
    ) -> list[Trajectory]:
        from transformers import DynamicCache

        batch = len(prompts)
        lengths = [len(p) for p in prompts]
        width = max(lengths)
        input_ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            attention_mask[row, width - len(prompt) :] = 1
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        next_position = torch.tensor(lengths, dtype=torch.long, device=self.device)

        cache = DynamicCache(config=self.model.config)
        logits = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1, :]

        eos = set(self.eos_token_ids)
        stop_window = 4 * max((len(s) for s in params.stop), default=0) + 4  # a char is <= 4 byte tokens
        responses: list[list[int]] = [[] for _ in range(batch)]
        logprobs: list[list[float]] = [[] for _ in range(batch)]
        finish: list[str | None] = [None] * batch
        stop_at: list[int | None] = [None] * batch  # character offset of a stop string in the text
        active = list(range(batch))  # row of each sequence still in the batch

        for step in range(params.max_new_tokens):
            tokens, token_logprobs = sample_next_tokens(logits, params, generator)
            still_running: list[int] = []
            for position, (row, token, logprob) in enumerate(zip(active, tokens.tolist(), token_logprobs.tolist())):
                responses[row].append(token)
                logprobs[row].append(logprob)
                if token in eos:
                    finish[row] = "stop"
                elif params.stop and (offset := self._stop_offset(responses[row], params.stop, stop_window)) is not None:
                    finish[row], stop_at[row] = "stop", offset
                elif step + 1 == params.max_new_tokens:
                    finish[row] = "length"
                else:
                    still_running.append(position)
            if not still_running:
                break
            if len(still_running) < len(active):  # drop finished rows from the batch and the cache
                keep = torch.tensor(still_running, dtype=torch.long, device=self.device)
                cache.batch_select_indices(keep)
                attention_mask, next_position, tokens = attention_mask[keep], next_position[keep], tokens[keep]
                active = [active[position] for position in still_running]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(active), 1))], dim=1)
            logits = self.model(
                input_ids=tokens.unsqueeze(-1),
                attention_mask=attention_mask,
                position_ids=next_position.unsqueeze(-1),
                past_key_values=cache,
                use_cache=True,
            ).logits[:, -1, :]
            next_position += 1

        trajectories = []
        for row, (prompt_index, sample_index) in enumerate(indices):
            ids = responses[row]
            text_ids = ids[:-1] if ids and ids[-1] in eos else ids
            text = self.tokenizer.decode(text_ids, skip_special_tokens=True)
            if stop_at[row] is not None:
                text = text[: stop_at[row]]
            trajectories.append(
                Trajectory(
                    prompt_index=prompt_index,
                    sample_index=sample_index,
                    prompt_ids=list(prompts[row]),
                    response_ids=ids,
                    text=text,
                    logprobs=logprobs[row],
                    finish_reason=finish[row],  # type: ignore[arg-type]  # every row finished
                )
            )
        return trajectories

    def _stop_offset(self, response: list[int], stops: list[str], window: int) -> int | None:
        """Where the first stop string begins in the response text, if the newest token completed one.

        Only the last ``window`` tokens are decoded on every step (cheap); the whole response only
        when a stop string shows up there.
        """
        tail = self.tokenizer.decode(response[-window:], skip_special_tokens=True)
        if not any(stop in tail for stop in stops):
            return None
        text = self.tokenizer.decode(response, skip_special_tokens=True)
        found = [text.find(stop) for stop in stops if stop in text]
        return min(found) if found else None

    def _tied_to_loaded(self, key: str, state: dict[str, Any]) -> bool:
        """Whether parameter ``key`` shares its storage with a parameter that ``state`` did give."""
        params = dict(self.model.named_parameters(remove_duplicate=False))
        if key not in params:
            return False
        pointer = params[key].data_ptr()
        return any(other in state and p.data_ptr() == pointer for other, p in params.items() if other != key)


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    generation_config = getattr(model, "generation_config", None)
    eos = getattr(generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return []
    return [int(e) for e in eos] if isinstance(eos, (list, tuple)) else [int(eos)]


def _pad_id(model: Any, tokenizer: Any, eos_token_ids: list[int]) -> int:
    # Any id works for padding (it is masked); prefer the declared one for readable debugging.
    for candidate in (getattr(getattr(model, "generation_config", None), "pad_token_id", None), tokenizer.pad_token_id):
        if candidate is not None:
            return int(candidate)
    return eos_token_ids[0]
