"""The paper's setups in configs/: every file loads, carries the numbers of Appendix B, and each
_ascend / _cuda pair differs only where the hardware does."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from npu_retu.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ALL = sorted(CONFIGS.glob("*.yaml"))
SFT = sorted(CONFIGS.glob("*_sft889k_*.yaml"))
RL = sorted(CONFIGS.glob("*_dapo_dc_*.yaml"))
PAIRS = sorted({re.sub(r"_(ascend|cuda)\.yaml$", "", p.name) for p in SFT + RL})

# The keys an _ascend file and its _cuda twin may disagree on: what the device count and memory
# decide (micro-batches, workers, generation batch), the attention kernel, and names that follow
# from the run (run.name; for RL, model.path = that hardware's SFT checkpoint). Every other key,
# the paper's hyperparameters above all, must be equal.
HARDWARE_KEYS = {
    "run.name",
    "model.path",  # RL only: the SFT run of the same hardware (checked below)
    "model.attn_implementation",
    "sft.micro_batch_size",
    "sft.eval_batch_size",
    "rl.micro_batch_size",
    "rl.rollout.batch_size",
    "cluster.num_workers",
    "cluster.cpus_per_worker",
}


def flat(cfg) -> dict[str, object]:
    out: dict[str, object] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else key, sub)
        else:
            out[prefix] = value

    walk("", dataclasses.asdict(cfg))
    return out


def yaml_key_lines(text: str) -> dict[str, tuple[int, str]]:
    """dotted key -> (line index, line) for every 'key:' line of a block-style YAML file."""
    found, stack = {}, []
    for index, line in enumerate(text.splitlines()):
        match = re.match(r"^( *)([A-Za-z_][A-Za-z0-9_]*):", line)
        if not match:
            continue
        depth = len(match.group(1)) // 2
        stack = stack[:depth] + [match.group(2)]
        found[".".join(stack)] = (index, line)
    return found


def marked_hardware(text: str, key: str) -> bool:
    """The key's line, or the comment block right above it, says HARDWARE."""
    index, line = yaml_key_lines(text)[key]
    lines = text.splitlines()
    if "HARDWARE" in line:
        return True
    above = index - 1
    while above >= 0 and lines[above].strip().startswith("#"):
        if "HARDWARE" in lines[above]:
            return True
        above -= 1
    return False


def test_the_paper_configs_are_all_there():
    names = {p.name for p in ALL}
    for model in ("qwen2.5-7b", "llama3.2-3b"):
        for phase in ("sft889k", "dapo_dc"):
            for hardware in ("ascend", "cuda"):
                assert f"{model}_{phase}_{hardware}.yaml" in names


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_every_config_loads(path):
    load_config(path)


@pytest.mark.parametrize("path", SFT, ids=lambda p: p.name)
def test_sft_configs_carry_appendix_b1(path):
    cfg = load_config(path)
    # B.1: "batch size of 512 and learning rate 1e-5 for 8 ... epochs", "Checkpoints are saved every 360 steps"
    assert cfg.sft.global_batch_size == 512
    assert cfg.sft.optim.lr == 1e-5
    assert (cfg.sft.epochs, cfg.sft.max_steps) == (8, 0)
    assert cfg.sft.eval_every == cfg.sft.save_every == 360
    assert cfg.sft.keep_checkpoints == 0 and cfg.monitor.enabled and not cfg.monitor.stop_on_decision
    # the paper's SFT ran on 16 devices; bf16 DeepSpeed with gradient checkpointing
    assert (cfg.cluster.launcher, cfg.cluster.num_workers) == ("ray", 16)
    assert (cfg.engine.name, cfg.engine.precision, cfg.model.dtype) == ("deepspeed", "bf16", "bfloat16")
    assert cfg.engine.zero_stage == 2 and cfg.model.gradient_checkpointing
    assert cfg.data.max_length >= 8192 + 1024 and cfg.data.too_long == "skip"
    # placeholders the user replaces, naming the data so that `npu-retu plan` finds SFT889K's mean length
    assert cfg.model.path.startswith("/path/to/")
    assert cfg.data.train_files == ["/path/to/SFT889K/train.parquet"]
    assert cfg.data.val_files == ["/path/to/Val-199/val.parquet"]


@pytest.mark.parametrize("path", RL, ids=lambda p: p.name)
def test_rl_configs_carry_appendix_b22(path):
    cfg = load_config(path)
    rl, algo = cfg.rl, cfg.rl.algo
    assert rl.algorithm == "dapo_dc"
    assert (algo.clip_low, algo.clip_high, algo.dual_clip) == (0.2, 0.28, 10.0)
    assert (algo.n, algo.dynamic_sampling, algo.max_draws) == (8, True, 10)
    assert (algo.kl_coef, algo.entropy_coef) == (0.0, 0.0)
    assert (algo.loss_agg, algo.adv_estimator, algo.normalize_std) == ("token-mean", "grpo", True)
    assert rl.optim.lr == 1e-6 and rl.optim.schedule == "constant"
    assert (rl.gen_batch_prompts, rl.train_batch_prompts, rl.mini_batch_prompts) == (128, 64, 64)
    assert (rl.max_prompt_length, rl.max_response_length) == (1024, 8192)
    assert (rl.rollout.temperature, rl.rollout.top_p) == (0.7, 1.0)
    assert rl.rollout.engine == "auto"  # vLLM / vllm-ascend where installed (README, "Rollout engines")
    assert (cfg.eval.temperature, cfg.eval.top_p, cfg.eval.max_new_tokens) == (0.7, 1.0, 0)  # 0 = 8192
    # the paper's benchmarks through the shipped suite, each with its own loader (avg@16 on AIME24/25)
    assert (cfg.eval.suite, cfg.eval.suite_data_dir, cfg.eval.files) == ("retu_math", "/path/to/RETU-benchmarks", [])
    assert (cfg.engine.name, cfg.engine.zero_stage, cfg.engine.precision) == ("deepspeed", 2, "bf16")
    assert cfg.cluster.launcher == "ray"
    if "_ascend" in path.name:
        assert cfg.cluster.num_workers == 128  # 128 x 910B (§5.2 / Appendix B)
    if path.name.startswith("llama3.2-3b"):
        assert rl.max_steps == 200  # §6.3: "all RL training capped at 200 steps"
    # the model is the SFT checkpoint of the same model and hardware
    model, hardware = path.name.split("_dapo_dc_")[0], path.name.rsplit("_", 1)[1].removesuffix(".yaml")
    assert f"/{model}_sft889k_{hardware}/checkpoints/" in cfg.model.path


@pytest.mark.parametrize("stem", PAIRS)
def test_ascend_and_cuda_twins_differ_only_in_hardware_keys(stem):
    ascend_path, cuda_path = CONFIGS / f"{stem}_ascend.yaml", CONFIGS / f"{stem}_cuda.yaml"
    ascend, cuda = flat(load_config(ascend_path)), flat(load_config(cuda_path))
    differ = {key for key in ascend if ascend[key] != cuda[key]}
    assert differ <= HARDWARE_KEYS, sorted(differ - HARDWARE_KEYS)
    assert "run.name" in differ  # two runs never share a folder
    if "_sft889k" in stem:
        assert "model.path" not in differ  # the same base model
    texts = (ascend_path.read_text(encoding="utf-8"), cuda_path.read_text(encoding="utf-8"))
    for key in differ:
        for text in texts:
            assert marked_hardware(text, key), f"{key} differs between the twins but is not marked HARDWARE"
