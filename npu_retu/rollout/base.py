"""What every rollout engine takes and returns: sampling parameters, trajectories, the engine protocol.

The RL step (DESIGN.md, "How data flows") calls ``rollout.generate(prompts, params)`` for ``n``
samples per prompt, scores them, trains, then ``rollout.sync_weights(model)``. Engines (transformers
here; vLLM / vllm-ascend on accelerators) differ in speed, never in this contract.

Log-probabilities: ``Trajectory.logprobs[t]`` is the log-probability of response token ``t`` under the
model at the sampling temperature *before* top-p truncation, ``log_softmax(logits / T)``. That is the
quantity the trainer recomputes for the old / current policy (``log_softmax(logits / T)`` on the same
tokens), so ``mean |logp_train - logp_rollout|`` measures engine drift alone (DESIGN.md, "Known
traps") and is not inflated by the top-p renormalisation. vLLM's default ``logprobs_mode``
(``raw_logprobs``) is ``log_softmax(logits)`` before the temperature; its ``processed_logprobs`` come
after temperature *and* top-k/top-p, which equals ours when ``top_p == 1`` (RETU's setting), so a vLLM
adapter must ask for ``processed_logprobs`` and, with ``top_p < 1``, recompute. With
``temperature == 0`` (greedy) there is no temperature to divide by and the log-probabilities are
``log_softmax(logits)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

FINISH_REASONS = ("stop", "length")


@dataclass(frozen=True)
class SamplingParams:
    """How to sample: ``n`` responses per prompt, at most ``max_new_tokens`` tokens each.

    ``temperature == 0`` is greedy decoding (``top_p`` is then ignored). ``top_p`` keeps the smallest
    set of most likely tokens whose probability reaches ``top_p`` (nucleus sampling). A response stops
    at an end-of-sequence token or when its text contains one of ``stop`` (the text is cut before the
    stop string). ``seed`` makes sampling repeatable; None draws one from torch's global generator.
    RETU's RL setting is n=8, temperature 0.7, top-p 1.0 (paper Appendix B).
    """

    n: int = 1
    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 512
    stop: list[str] = field(default_factory=list)
    seed: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"SamplingParams.n must be an integer >= 1, got {self.n!r}")
        if not isinstance(self.temperature, (int, float)) or not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be a finite number >= 0 (0 = greedy), got {self.temperature!r}")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p!r}")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"SamplingParams.max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if isinstance(self.stop, str) or not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"SamplingParams.stop must be a list of non-empty strings, got {self.stop!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"SamplingParams.seed must be an integer or None, got {self.seed!r}")
        object.__setattr__(self, "stop", list(self.stop))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Trajectory:
    """One sampled response to prompt ``prompt_index`` (its ``sample_index``-th of ``n``).

    ``response_ids`` include the end-of-sequence token when the model emitted one (the policy must
    learn to stop, so it is trained on), and the tokens that completed a stop string; ``text`` is the
    decoded response without the end-of-sequence token and cut before a stop string.
    ``logprobs[t]`` belongs to ``response_ids[t]`` (see the module docstring for which distribution).
    ``finish_reason`` is "stop" (end-of-sequence or stop string) or "length" (``max_new_tokens``).
    ``expert`` marks an expert trajectory from the data (LUFFY / SRFT / UPT put them beside the
    rollouts): not sampled, so it has no ``logprobs``.
    """

    prompt_index: int
    sample_index: int
    prompt_ids: list[int]
    response_ids: list[int]
    text: str
    logprobs: list[float]
    finish_reason: Literal["stop", "length"]
    expert: bool = False

    @property
    def num_response_tokens(self) -> int:
        return len(self.response_ids)


@dataclass(frozen=True)
class GenerationStats:
    """Counts and wall time of one ``generate`` call, for tokens/s and for the FLOPs of rollouts."""

    num_prompts: int
    num_sequences: int
    prompt_tokens: int  # summed over sequences (a prompt sampled n times counts n times)
    response_tokens: int
    seconds: float

    @classmethod
    def of(cls, num_prompts: int, trajectories: list[Trajectory], seconds: float) -> GenerationStats:
        """The stats of one ``generate`` call that returned ``trajectories`` in ``seconds``."""
        return cls(
            num_prompts=num_prompts,
            num_sequences=len(trajectories),
            prompt_tokens=sum(len(t.prompt_ids) for t in trajectories),
            response_tokens=sum(len(t.response_ids) for t in trajectories),
            seconds=seconds,
        )

    @property
    def tokens_per_second(self) -> float:
        """Generated (response) tokens per second of wall time."""
        return self.response_tokens / self.seconds if self.seconds > 0 else float("nan")


@runtime_checkable
class RolloutEngine(Protocol):
    """A policy that samples responses (DESIGN.md, "Interfaces").

    ``generate`` returns ``len(prompts) * params.n`` trajectories ordered prompt-major: all samples of
    prompt 0, then of prompt 1, ... ``sync_weights`` takes the trainer's model (or its state dict) and
    makes the engine sample from those weights. ``sleep`` frees the engine's device memory for training
    and ``wake`` brings it back; engines that cannot (``supports_sleep`` False) treat both as no-ops.
    ``last_stats`` describes the latest ``generate`` call (None before the first).
    """

    supports_sleep: bool
    last_stats: GenerationStats | None

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Trajectory]: ...

    def sync_weights(self, model_or_state_dict: Any) -> None: ...

    def sleep(self) -> None: ...

    def wake(self) -> None: ...
