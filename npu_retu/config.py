"""Configs: YAML files in ``configs/`` loaded into dataclasses, with ``key.sub=value`` overrides.

Every section is a plain dataclass with defaults. Loading is strict: an unknown key, a value of the
wrong type or an impossible value raises :class:`ConfigError` naming the key and what is allowed.

    cfg = load_config("configs/demo_cpu.yaml", overrides=["sft.optim.lr=3e-4", "monitor.pick=mild"])
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from npu_retu.errors import UserError


class ConfigError(UserError, ValueError):
    """A config key is unknown, mistyped or out of range; the message names the key."""


# --------------------------------------------------------------------------------------------
# sections


@dataclass
class RunConfig:
    name: str = "run"
    output_dir: str = "runs"  # the run folder is output_dir/name
    seed: int = 0
    device: Literal["auto", "cpu", "cuda", "npu"] = "auto"
    progress: bool = True  # progress bar (only drawn on a terminal)
    # Where metrics go (rank 0), each row with its step and cumulative FLOPs: jsonl (metrics.jsonl,
    # required: resume and the reports read it), tensorboard (run folder), and the trackers wandb,
    # mlflow, swanlab (pip install 'npu-retu[tracking]'; set up by their own environment variables:
    # WANDB_MODE, MLFLOW_TRACKING_URI, SWANLAB_MODE, ...; see npu_retu.report.trackers).
    loggers: list[Literal["jsonl", "tensorboard", "wandb", "mlflow", "swanlab"]] = field(
        default_factory=lambda: ["jsonl", "tensorboard"])
    project: str = "npu-retu"  # the trackers' project (wandb, swanlab) / experiment (mlflow); run.name names the run

    def validate(self) -> None:
        # the name is one folder inside output_dir: never ".", ".." or a path (--overwrite deletes it)
        _check(
            self.name.strip() != "" and self.name not in (".", "..") and not any(c in self.name for c in "/\\\0"),
            "run.name", "a plain folder name (not '.' or '..', no '/' or '\\')", self.name,
        )
        _check("jsonl" in self.loggers, "run.loggers",
               "a list that includes 'jsonl' (metrics.jsonl is what resume and the reports read)", self.loggers)
        _check(len(set(self.loggers)) == len(self.loggers), "run.loggers", "a list without repeats", self.loggers)
        _check(self.project.strip() != "", "run.project", "a non-empty name", self.project)


@dataclass
class ModelConfig:
    # A Hugging Face model folder, or "embedded:base" for the embedded default's base model
    # (built on first use, see npu_retu.models.embedded).
    path: str = "embedded:base"
    tokenizer: str | None = None  # defaults to the model folder
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] = "sdpa"
    gradient_checkpointing: bool = False
    # Run Python code shipped in the model folder (``auto_map`` in config.json / tokenizer_config.json)?
    # Off: such a folder is refused with a clear error instead of its code being imported.
    trust_remote_code: bool = False


@dataclass
class DataConfig:
    # Files (JSONL / JSON / Parquet / Arrow), folders of shards, globs, datasets save_to_disk folders
    # ("folder:split" for a DatasetDict), or "embedded:..." names (see npu_retu.models.embedded.DATASETS).
    train_files: list[str] = field(default_factory=lambda: ["embedded:sft-uniform-2k"])
    val_files: list[str] = field(default_factory=list)
    val_size: int = 0  # when no val_files: hold out this many training rows as the validation split
    max_length: int = 512  # tokens per example (prompt + response)
    too_long: Literal["error", "skip", "truncate"] = "error"
    packing: bool = False
    skip_bad_rows: bool = False  # count and skip malformed rows instead of stopping
    shuffle: bool = True
    # tokenization worker processes: null = min(8, CPUs) when 32 MiB or more must be tokenized, else
    # none; 0 or 1 = tokenize in the training process (npu_retu.data.prepare)
    num_workers: int | None = None
    cache: bool = True  # reuse tokenized files across runs (npu_retu.data.token_cache)
    cache_dir: str | None = None  # null: $NPU_RETU_CACHE/tokenized (default ~/.cache/npu-retu/tokenized)

    def validate(self) -> None:
        _check(len(self.train_files) > 0, "data.train_files", "at least one file", self.train_files)
        _check(self.val_size >= 0, "data.val_size", ">= 0", self.val_size)
        _check(self.max_length >= 8, "data.max_length", ">= 8", self.max_length)
        _check(self.num_workers is None or self.num_workers >= 0, "data.num_workers",
               ">= 0 (0 or 1: in the training process), or null for the automatic choice", self.num_workers)
        _check(self.cache_dir is None or self.cache_dir.strip() != "", "data.cache_dir",
               "a folder, or null for the default", self.cache_dir)


@dataclass
class OptimConfig:
    """AdamW and its schedule: ``sft.optim`` for SFT, ``rl.optim`` (other defaults) for RL."""

    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: Literal["constant", "linear", "cosine"] = "cosine"
    min_lr_ratio: float = 0.0  # final lr = lr * min_lr_ratio for linear / cosine
    max_grad_norm: float = 1.0  # <= 0 disables clipping

    def validate(self, prefix: str = "sft.optim") -> None:
        _check(0 < self.lr <= 1, f"{prefix}.lr", "in (0, 1]", self.lr)
        _check(self.weight_decay >= 0, f"{prefix}.weight_decay", ">= 0", self.weight_decay)
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"{prefix}.betas", "two numbers in [0, 1)", self.betas)
        _check(self.warmup_steps >= 0, f"{prefix}.warmup_steps", ">= 0", self.warmup_steps)
        _check(0 <= self.min_lr_ratio <= 1, f"{prefix}.min_lr_ratio", "in [0, 1]", self.min_lr_ratio)


@dataclass
class SFTConfig:
    global_batch_size: int = 32  # sequences per optimizer step
    micro_batch_size: int = 8  # sequences per forward/backward; accumulation = global / micro
    max_steps: int = 0  # 0: derive from epochs
    epochs: float = 1.0
    eval_every: int = 50  # validation loss every N optimizer steps (and at the last step)
    save_every: int = 50  # checkpoint every M steps (and at the last step)
    keep_checkpoints: int = 0  # 0 keeps all (the phase analysis needs them)
    log_every: int = 1
    eval_batch_size: int = 32
    optim: OptimConfig = field(default_factory=OptimConfig)  # RL's is rl.optim
    # the loss's log-probs: "unfused" = full logits from the model's forward (B x S x V, fp32 for the
    # loss); "auto" = the fused kernel the device layer picks, straight from the hidden states and the
    # LM head, never holding the logits (what lets a 16K-token sequence of a 152K vocabulary fit); or
    # name one (reference, triton, ascend)
    kernels: Literal["auto", "unfused", "reference", "triton", "ascend"] = "unfused"

    def validate(self) -> None:
        _check(self.global_batch_size > 0, "sft.global_batch_size", "> 0", self.global_batch_size)
        _check(self.micro_batch_size > 0, "sft.micro_batch_size", "> 0", self.micro_batch_size)
        _check(
            self.global_batch_size % self.micro_batch_size == 0,
            "sft.global_batch_size",
            f"a multiple of sft.micro_batch_size ({self.micro_batch_size})",
            self.global_batch_size,
        )
        _check(self.max_steps >= 0, "sft.max_steps", ">= 0", self.max_steps)
        _check(self.max_steps > 0 or self.epochs > 0, "sft.epochs", "> 0 when sft.max_steps is 0", self.epochs)
        _check(self.eval_every > 0, "sft.eval_every", "> 0", self.eval_every)
        _check(self.save_every > 0, "sft.save_every", "> 0", self.save_every)
        _check(self.keep_checkpoints >= 0, "sft.keep_checkpoints", ">= 0", self.keep_checkpoints)
        _check(self.log_every > 0, "sft.log_every", "> 0", self.log_every)
        _check(self.eval_batch_size > 0, "sft.eval_batch_size", "> 0", self.eval_batch_size)
        self.optim.validate("sft.optim")
        _check(
            self.max_steps == 0 or self.optim.warmup_steps <= self.max_steps,
            "sft.optim.warmup_steps",
            f"<= sft.max_steps ({self.max_steps})",
            self.optim.warmup_steps,
        )


@dataclass
class MonitorConfig:
    """The SFT phase monitor (paper Eq. 13-17); see npu_retu.monitor."""

    enabled: bool = True
    delta: float = 0.02  # Stable: L <= (1 + delta) * L_min
    delta2: float = 0.1  # Severe: L >= (1 + delta2) * L_min
    pick: Literal["stable", "mild"] = "stable"
    patience: int = 3  # validation points without a relative improvement > delta before "switch"
    stop_on_decision: bool = True  # stop SFT when the monitor says switch / rollback

    def validate(self) -> None:
        _check(0 < self.delta < self.delta2, "monitor.delta", f"in (0, monitor.delta2={self.delta2})", self.delta)
        _check(self.patience >= 1, "monitor.patience", ">= 1", self.patience)


@dataclass
class EngineConfig:
    """The training engine (npu_retu.engine): one process of plain PyTorch, or DeepSpeed ZeRO."""

    # local: plain PyTorch AdamW; with several ranks it all-reduces the gradients (data parallel,
    # every rank holds the whole model and optimizer). deepspeed: ZeRO stages 1-3 (shards the
    # optimizer states / + gradients / + parameters across the data-parallel ranks).
    name: Literal["local", "deepspeed"] = "local"
    zero_stage: int = 2
    # DeepSpeed's mixed precision (bf16 weights and gradients, fp32 master weights and Adam states);
    # auto: bf16 on an accelerator that supports it, fp32 on CPU. The local engine trains in model.dtype.
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    offload_optimizer: Literal["none", "cpu"] = "none"  # ZeRO-Offload: optimizer states and step on the host
    offload_params: Literal["none", "cpu"] = "none"  # ZeRO-3 only: parameters live on the host
    reduce_bucket_size: int = 500_000_000  # elements per gradient-reduction bucket (DeepSpeed)
    # On Ascend: swap the Qwen2 / Llama RMSNorm, SwiGLU and rotary for the vendor's fused ops
    # (npu_retu.device.apply_fused_ops); other devices run the transformers code unchanged.
    fused_ops: bool = True

    def validate(self) -> None:
        _check(self.zero_stage in (0, 1, 2, 3), "engine.zero_stage", "0, 1, 2 or 3", self.zero_stage)
        _check(
            self.offload_params == "none" or (self.name == "deepspeed" and self.zero_stage == 3),
            "engine.offload_params", "'none' unless engine.name=deepspeed and engine.zero_stage=3", self.offload_params,
        )
        _check(
            self.offload_optimizer == "none" or (self.name == "deepspeed" and self.zero_stage >= 1),
            "engine.offload_optimizer", "'none' unless engine.name=deepspeed and engine.zero_stage >= 1",
            self.offload_optimizer,
        )
        _check(self.reduce_bucket_size > 0, "engine.reduce_bucket_size", "> 0", self.reduce_bucket_size)


@dataclass
class ClusterConfig:
    """Where the ranks run (npu_retu.distributed): this process, or Ray workers placed by the driver."""

    # local: this process is the whole job, or one rank of a job whose RANK / WORLD_SIZE /
    # MASTER_ADDR / MASTER_PORT are already set (torchrun, the deepspeed launcher). ray: the Ray
    # driver reserves one bundle per device and starts one worker actor per bundle.
    launcher: Literal["local", "ray"] = "local"
    ray_address: str = "auto"  # "auto": the running cluster (scripts/launch.sh starts it); "local": start one here
    num_workers: int = 0  # ranks; 0 = one per device the Ray cluster has (required when it has none)
    cpus_per_worker: int = 1
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    master_port: int = 0  # rank 0's torch.distributed port; 0 = a free port picked on rank 0's node
    timeout_s: float = 1800.0  # collective timeout; a rank stuck longer fails instead of hanging

    def validate(self) -> None:
        _check(self.num_workers >= 0, "cluster.num_workers", ">= 0 (0: one per device)", self.num_workers)
        _check(self.cpus_per_worker >= 1, "cluster.cpus_per_worker", ">= 1", self.cpus_per_worker)
        _check(0 <= self.master_port < 65536, "cluster.master_port", "a port in 0..65535 (0: pick one)", self.master_port)
        _check(self.timeout_s > 0, "cluster.timeout_s", "> 0", self.timeout_s)


@dataclass
class AlgoConfig:
    """The RL algorithm's knobs (paper §3.2, Eq. 2-4; Appendix B). ``rl.algorithm`` fills them from a
    preset (npu_retu.algos.presets: grpo, dapo_d, dapo_dc); keys given under ``rl.algo`` override it.
    The defaults are DAPO_dc as RETU ran it (Appendix B.2.2)."""

    n: int = 8  # rollouts per prompt (the group size G of Eq. 2)
    loss: str = "clipped"  # an RL loss in npu_retu.algos.LOSSES: clipped (Eq. 3, with the clip settings below)
    adv_estimator: str = "grpo"  # a name in npu_retu.algos.ADVANTAGE_ESTIMATORS: grpo (Eq. 2) | grpo_no_std
    # Divide by the group std (Eq. 2)? null: the estimator's own choice (grpo yes, grpo_no_std no).
    normalize_std: bool | None = None
    loss_agg: Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"] = "token-mean"
    clip_low: float = 0.2  # epsilon_low (TRL: epsilon)
    clip_high: float = 0.28  # epsilon_high (TRL: epsilon_high); 0.28 = DAPO clip-higher, 0.2 = symmetric (GRPO, DAPO_d)
    dual_clip: float | None = 10.0  # cap on the loss of A < 0 tokens, in units of |A|; null: off
    log_ratio_clamp: float = 20.0  # |logp - old_logp| clamp before exp (an overflow guard only)
    kl_coef: float = 0.0  # KL to the reference (starting) policy; 0 = off and no reference model (RETU)
    kl_kind: Literal["k1", "k2", "k3"] = "k3"
    entropy_coef: float = 0.0  # entropy bonus; 0 in RETU
    dynamic_sampling: bool = True  # DAPO's filter + refill (off: GRPO)
    max_draws: int = 10  # generation batches per step at most, with dynamic sampling
    # Synchronized SFT-RL (npu_retu.algos.synchronized; loss luffy | srft | upt):
    experts_per_prompt: int = 1  # LUFFY / SRFT: N expert trajectories in each group of n (n - N rollouts)
    gate: int = 0  # UPT: a group with at most this many correct of n rollouts trains on its expert (SFT)
    sft_coef: float = 1.0  # UPT: weight of the SFT (token-mean NLL) term
    shaping_gamma: float = 0.1  # LUFFY / SRFT: expert tokens use f(p) = p / (p + gamma) (Eq. 5)
    srft_sft_weight: float = 0.5  # SRFT: the expert's NLL weight is this * exp(-H) (the paper's text: 5)
    srft_pos_weight: float = 0.1  # SRFT: a correct rollout's weight is this * exp(H) (the paper's text: 1)
    # Skip an optimizer step whose gradient norm before clipping exceeds this (UPT: 80); null: never
    skip_grad_norm: float | None = None

    def validate(self) -> None:
        from npu_retu.algos import ADVANTAGE_ESTIMATORS
        from npu_retu.algos.losses import loss_names

        _check(self.loss in loss_names("rl"), "rl.algo.loss", f"one of {', '.join(loss_names('rl'))}", self.loss)
        _check(self.adv_estimator in ADVANTAGE_ESTIMATORS, "rl.algo.adv_estimator", f"one of {', '.join(sorted(ADVANTAGE_ESTIMATORS))}", self.adv_estimator)
        _check(
            not (self.adv_estimator == "grpo_no_std" and self.normalize_std is True),
            "rl.algo.normalize_std",
            "false or null with rl.algo.adv_estimator=grpo_no_std (use adv_estimator=grpo to divide by the std)",
            self.normalize_std,
        )
        _check(0 <= self.clip_low < 1, "rl.algo.clip_low", "in [0, 1)", self.clip_low)
        _check(self.clip_high >= 0, "rl.algo.clip_high", ">= 0", self.clip_high)
        _check(self.dual_clip is None or self.dual_clip > 1, "rl.algo.dual_clip", "> 1, or null to turn it off", self.dual_clip)
        _check(self.log_ratio_clamp > 0, "rl.algo.log_ratio_clamp", "> 0", self.log_ratio_clamp)
        _check(self.kl_coef >= 0, "rl.algo.kl_coef", ">= 0", self.kl_coef)
        _check(self.entropy_coef >= 0, "rl.algo.entropy_coef", ">= 0", self.entropy_coef)
        _check(self.max_draws >= 1, "rl.algo.max_draws", ">= 1", self.max_draws)
        # A group of one has no baseline: its advantage is 0 and dynamic sampling would drop it.
        _check(self.n >= 2, "rl.algo.n", ">= 2 (a group-relative advantage needs at least two rollouts per prompt)", self.n)
        experts = self.experts
        if experts == "mixed":
            _check(1 <= self.experts_per_prompt < self.n, "rl.algo.experts_per_prompt",
                   f"in 1..n-1 = 1..{self.n - 1} (each group of rl.algo.n={self.n} holds n - N >= 1 rollouts and N "
                   "expert trajectories; G <= N leaves no rollout)", self.experts_per_prompt)
        if experts == "gated":
            _check(0 <= self.gate <= self.n, "rl.algo.gate", f"in 0..n = 0..{self.n} (the number of correct rollouts "
                   "at or below which a group trains on its expert)", self.gate)
        if experts is not None:
            _check(not self.dynamic_sampling, "rl.algo.dynamic_sampling",
                   f"false with rl.algo.loss={self.loss} (the synchronized algorithms draw one generation batch)",
                   self.dynamic_sampling)
        _check(self.sft_coef >= 0, "rl.algo.sft_coef", ">= 0", self.sft_coef)
        _check(self.shaping_gamma > 0, "rl.algo.shaping_gamma", "> 0", self.shaping_gamma)
        _check(self.srft_sft_weight >= 0, "rl.algo.srft_sft_weight", ">= 0", self.srft_sft_weight)
        _check(self.srft_pos_weight >= 0, "rl.algo.srft_pos_weight", ">= 0", self.srft_pos_weight)
        _check(self.skip_grad_norm is None or self.skip_grad_norm > 0, "rl.algo.skip_grad_norm", "> 0, or null (never skip)",
               self.skip_grad_norm)

    @property
    def experts(self) -> str | None:
        """How the loss uses expert trajectories: None (rollouts only), "mixed" (LUFFY / SRFT: N in
        every group) or "gated" (UPT: one replaces a group the gate sends to SFT)."""
        from npu_retu.algos.losses import get_loss

        return getattr(get_loss(self.loss), "experts", None)

    @property
    def rollouts_per_prompt(self) -> int:
        """Samples generated per prompt: n, less the N expert trajectories of a mixed group."""
        return self.n - self.experts_per_prompt if self.experts == "mixed" else self.n


@dataclass
class RolloutConfig:
    # transformers: `generate` on the training model itself. vllm: a vLLM engine (vllm-ascend on
    # Ascend, the CPU build on CPU) colocated with training, its weights synced after each step.
    # auto: vllm where it is installed, else transformers.
    engine: Literal["auto", "transformers", "vllm"] = "transformers"
    temperature: float = 0.7
    top_p: float = 1.0
    batch_size: int = 256  # sequences per generation batch of the transformers engine
    # Correct the mismatch between the rollout engine's sampling probabilities and the trainer's
    # (different kernels, precision): "tis" weights each token's loss by the truncated importance
    # ratio min(p_trainer / p_rollout, is_cap) (verl / TRL's TIS); "none" trusts the rollout.
    is_correction: Literal["none", "tis"] = "none"
    is_cap: float = 2.0  # the TIS ratio cap
    # vLLM only:
    gpu_memory_utilization: float = 0.5  # share of each accelerator's memory vLLM may take beside training
    tensor_parallel_size: int = 1  # accelerators one vLLM engine spans
    cpu_kv_cache_gb: float = 1.0  # the CPU build's KV cache, GB (vLLM's VLLM_CPU_KVCACHE_SPACE)
    sleep_level: int = 0  # 0: stays awake during training; 1: offloads weights, drops KV cache; 2: drops both
    enforce_eager: bool = True  # no CUDA graphs / torch.compile: a faster start, enough for small models

    def validate(self) -> None:
        _check(self.temperature > 0, "rl.rollout.temperature", "> 0", self.temperature)
        _check(0 < self.top_p <= 1, "rl.rollout.top_p", "in (0, 1]", self.top_p)
        _check(self.batch_size >= 1, "rl.rollout.batch_size", ">= 1", self.batch_size)
        _check(self.is_cap > 0, "rl.rollout.is_cap", "> 0", self.is_cap)
        _check(0 < self.gpu_memory_utilization <= 1, "rl.rollout.gpu_memory_utilization", "in (0, 1]",
               self.gpu_memory_utilization)
        _check(self.tensor_parallel_size >= 1, "rl.rollout.tensor_parallel_size", ">= 1", self.tensor_parallel_size)
        _check(self.cpu_kv_cache_gb > 0, "rl.rollout.cpu_kv_cache_gb", "> 0", self.cpu_kv_cache_gb)
        _check(self.sleep_level in (0, 1, 2), "rl.rollout.sleep_level", "0, 1 or 2", self.sleep_level)


@dataclass
class RewardConfig:
    name: Literal["math_verify"] = "math_verify"
    num_workers: int = 2  # verifier processes
    timeout_s: float = 10.0  # hard wall-clock limit per response; a hung worker is killed

    def validate(self) -> None:
        _check(self.num_workers >= 1, "rl.reward.num_workers", ">= 1", self.num_workers)
        _check(self.timeout_s > 0, "rl.reward.timeout_s", "> 0", self.timeout_s)


def _rl_optim() -> OptimConfig:
    return OptimConfig(lr=1e-6, schedule="constant", warmup_steps=0)


@dataclass
class RLConfig:
    train_files: list[str] = field(default_factory=lambda: ["embedded:rl-train"])
    # SFT-format files whose expert trajectories join the RL prompts by prompt text (LUFFY / SRFT /
    # UPT need one per prompt; SFT-format rows in train_files carry their own)
    expert_files: list[str] = field(default_factory=list)
    algorithm: Literal["grpo", "dapo_d", "dapo_dc", "luffy", "srft", "upt"] = "dapo_dc"
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    max_prompt_length: int = 1024
    max_response_length: int = 8192
    train_batch_prompts: int = 64  # prompts per step after dynamic sampling
    gen_batch_prompts: int = 128  # prompts per generation batch (DAPO draws until the batch is full)
    mini_batch_prompts: int = 64  # prompts per optimizer step (all their n samples)
    micro_batch_size: int = 8  # sequences per forward/backward
    ppo_epochs: int = 1
    max_steps: int = 100
    max_flops: float = 0.0  # also stop once cumulative RL FLOPs (Appendix C) reach this; 0: no compute budget
    eval_every: int = 10  # held-out evaluation every N steps (0: only at the end)
    eval_at_start: bool = True  # evaluate the starting checkpoint first (the RL curve's x = 0 point)
    save_every: int = 10
    keep_checkpoints: int = 0
    optim: OptimConfig = field(default_factory=_rl_optim)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    # log-probs and the policy loss: "auto" = the fused kernels the device layer picks (reference on
    # CPU, triton on CUDA, ascend on NPU), or name one; "unfused" = full logits from the model's forward
    kernels: Literal["auto", "unfused", "reference", "triton", "ascend"] = "auto"

    def validate(self) -> None:
        _check(len(self.train_files) > 0, "rl.train_files", "at least one file", self.train_files)
        self.algo.validate()
        self.optim.validate("rl.optim")
        self.rollout.validate()
        self.reward.validate()
        for key in ("max_prompt_length", "max_response_length", "train_batch_prompts", "gen_batch_prompts",
                    "mini_batch_prompts", "micro_batch_size", "ppo_epochs", "max_steps", "save_every"):
            _check(getattr(self, key) >= 1, f"rl.{key}", ">= 1", getattr(self, key))
        _check(self.eval_every >= 0, "rl.eval_every", ">= 0", self.eval_every)
        _check(self.max_flops >= 0, "rl.max_flops", ">= 0 (0: no compute budget)", self.max_flops)
        _check(
            self.train_batch_prompts % self.mini_batch_prompts == 0,
            "rl.train_batch_prompts",
            f"a multiple of rl.mini_batch_prompts ({self.mini_batch_prompts})",
            self.train_batch_prompts,
        )


@dataclass
class EvalConfig:
    """Held-out evaluation: avg@n and pass@k with these sampling settings (reported with every number)."""

    # RL rows (prompt + answer) or "NAME=FILE" for a math benchmark in its original format, read by its
    # loader (gsm8k, minerva_math, olympiadbench, aime24, aime25, amc23, math500; npu_retu.data.schemas.load_benchmark)
    files: list[str] = field(default_factory=lambda: ["embedded:rl-test"])
    n: int = 4
    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 0  # 0: rl.max_response_length
    max_problems: int = 0  # 0: all
    ks: list[int] = field(default_factory=lambda: [1])
    seed: int = 1234
    prompt_template: str = ""  # wraps each problem ("{problem}" replaced); "" = the problem as it is
    # a suite file (or shipped suite: npu_retu/configs/eval/, e.g. retu_math) naming benchmarks with their
    # own loader, n, temperature, max tokens and prompt template (npu_retu.eval.suite); replaces eval.files,
    # and the eval.* settings above fill what a benchmark leaves out
    suite: str = ""
    suite_data_dir: str = ""  # the folder a suite's relative files are read from ("" = the suite file's folder)
    save_generations: bool = True  # eval/step-N/generations.jsonl and items.jsonl beside each point

    def validate(self) -> None:
        _check(self.n >= 1, "eval.n", ">= 1", self.n)
        _check(not self.prompt_template or "{problem}" in self.prompt_template, "eval.prompt_template",
               "a string holding {problem}, or empty", self.prompt_template)
        _check(self.temperature >= 0, "eval.temperature", ">= 0 (0 = greedy)", self.temperature)
        _check(0 < self.top_p <= 1, "eval.top_p", "in (0, 1]", self.top_p)
        _check(self.max_new_tokens >= 0, "eval.max_new_tokens", ">= 0", self.max_new_tokens)
        _check(self.max_problems >= 0, "eval.max_problems", ">= 0", self.max_problems)
        _check(all(1 <= k <= self.n for k in self.ks), "eval.ks", f"values in 1..eval.n ({self.n})", self.ks)


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if hasattr(section, "validate"):
                section.validate()
        _check(
            self.sft.kernels == "unfused" or not (self.engine.name == "deepspeed" and self.engine.zero_stage == 3),
            "sft.kernels",
            "'unfused' with engine.zero_stage=3 (the fused loss reads the LM-head weight outside the module, where ZeRO-3 "
            "keeps only this rank's shard)",
            self.sft.kernels,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------
# loading


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, cls: type = Config) -> Any:
    """Load a YAML file (or the defaults when ``path`` is None), apply overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml_config(Path(path))
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected key.sub=value")
        try:
            value = _load_yaml(raw) if raw.strip() != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({_yaml_problem(e)}); quote it to pass a string") from None
        _set_path(data, key.strip().split("."), value)
    if cls is Config:
        data = apply_rl_preset(data)
    cfg = from_dict(cls, data, prefix="")
    cfg.validate()
    return cfg


def read_yaml_config(path: Path) -> dict[str, Any]:
    """A config file's mapping of sections; every problem with the file is one :class:`ConfigError` line."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start} is {e.object[e.start:e.start + 1]!r}); save it as UTF-8") from None
    try:
        loaded = _load_yaml(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(e)}") from None
    if loaded is None:
        raise ConfigError(f"{path}: holds no settings (empty, or only comments); write at least one section, e.g. 'run: {{name: my-run}}'")
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(loaded).__name__}")
    return loaded


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key given twice in one mapping is an error (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one section (lines {seen[key]} and {line})", key_node.start_mark
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one line: the problem and where."""
    problem = getattr(error, "problem", None)
    mark = getattr(error, "problem_mark", None)
    if problem is None:
        return " ".join(str(error).split())
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def apply_rl_preset(data: dict[str, Any]) -> dict[str, Any]:
    """Fill ``rl.algo`` from the preset named by ``rl.algorithm``; keys set under ``rl.algo`` win."""
    from npu_retu.algos.presets import RL_PRESET_OPTIM, RL_PRESETS

    rl = data.get("rl") or {}
    if not isinstance(rl, dict):
        return data  # from_dict reports the wrong type
    name = rl.get("algorithm", RLConfig.algorithm)
    if name not in RL_PRESETS:
        raise ConfigError(f"config key 'rl.algorithm': {name!r} is not allowed; choose one of {', '.join(map(repr, RL_PRESETS))}")
    given = rl.get("algo") or {}
    if not isinstance(given, dict):
        return data
    merged = {**RL_PRESETS[name], **given}
    out = {**rl, "algo": merged}
    optim = rl.get("optim") or {}
    if RL_PRESET_OPTIM.get(name) and isinstance(optim, dict):
        out["optim"] = {**RL_PRESET_OPTIM[name], **optim}
    return {**data, "rl": out}


def from_dict(cls: type, data: Any, prefix: str) -> Any:
    """Build dataclass ``cls`` from a mapping, checking every key and type."""
    where = prefix or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__} ({data!r})")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in data:
        key = f"{prefix}.{name}" if prefix else name
        if key in MOVED_KEYS:
            raise ConfigError(_moved_message(key, data[name]))
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"unknown config key '{key}'; valid keys{' in ' + repr(prefix) if prefix else ''}: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        default_factory = fields[name].default_factory
        if dataclasses.is_dataclass(hints[name]) and isinstance(value, dict) and default_factory is not dataclasses.MISSING:
            # A section whose default differs from its class defaults (rl.optim is not sft.optim): the
            # keys given override that default, not the class defaults.
            value = _deep_merge(dataclasses.asdict(default_factory()), value)
        kwargs[name] = _coerce(hints[name], value, key)
    return cls(**kwargs)


# Keys that moved, old -> (new, a note): the old key is an error that says where it went.
MOVED_KEYS: dict[str, tuple[str, str]] = {
    "optim": ("sft.optim", "RL's is 'rl.optim'"),
}


def _moved_message(key: str, value: Any) -> str:
    new, note = MOVED_KEYS[key]
    message = f"config key '{key}' moved to '{new}'" + (f" ({note})" if note else "")
    if isinstance(value, dict) and value:
        first = next(iter(value))
        message += f"; e.g. '{key}.{first}' is now '{new}.{first}'"
    return message


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = get_origin(tp)
    args = get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        last: ConfigError | None = None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as e:
                last = e
        raise last or ConfigError(f"config key '{key}': unexpected value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config key '{key}': {value!r} is not allowed; choose one of {', '.join(map(repr, args))}")
        return value
    if origin is list:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # a single value where a list is expected: a list of one
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        (item_tp,) = args or (Any,)
        return [_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML reads 1e-5 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        if not math.isfinite(number):
            raise ConfigError(f"config key '{key}': expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
    raise ConfigError(f"config key '{key}': unsupported type {tp}")


def _set_path(data: dict[str, Any], keys: list[str], value: Any) -> None:
    node = data
    for k in keys[:-1]:
        child = node.get(k)
        if child is None:
            child = node[k] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(keys)}: '{k}' is not a section")
        node = child
    node[keys[-1]] = value


def _check(ok: bool, key: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {value!r} is not allowed; must be {allowed}")


def dump_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (the run folder's config.yaml), atomically."""
    import os

    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False), encoding="utf-8")
    os.replace(tmp, path)
