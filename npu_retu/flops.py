"""FLOPs accounting as in the RETU paper, Appendix C, and model FLOPs utilisation (MFU).

Compute is the paper's x-axis: every SFT and RL step is logged against cumulative FLOPs counted with
these formulas. All counts are for dense decoder-only transformers with SwiGLU MLPs (Eq. 18); a
mixture-of-experts config is refused rather than counted wrongly.

Notation (Appendix C): L layers, H hidden size, H_ff MLP intermediate size, V vocabulary size,
D_kv the width of the K projection (num_key_value_heads x head_dim), S the mean sequence length
(prompt + response) of the data the step processes, B a batch size, G a group size.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from npu_retu.errors import UserError

EXA = 1e18  # the paper reports compute in exaFLOPs


# ----------------------------------------------------------------------------------------------
# Model shape
# ----------------------------------------------------------------------------------------------

# config.json keys that name a mixture-of-experts model: Eq. 18's dense MLP count would be wrong.
_EXPERT_COUNT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")


@dataclass(frozen=True)
class ModelShape:
    """The five numbers Appendix C needs: L, H, H_ff, V and D_kv."""

    num_layers: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    kv_dim: int  # num_key_value_heads * head_dim: the output width of the K (and of the V) projection

    @classmethod
    def from_hf_config(cls, config) -> "ModelShape":
        """Read the shape from a transformers ``PretrainedConfig``, a ``config.json`` dict, or a path
        to a model folder or to its ``config.json``.

        ``head_dim`` is the config's own ``head_dim`` when it has one, else
        ``hidden_size // num_attention_heads``; ``num_key_value_heads`` defaults to
        ``num_attention_heads`` (plain multi-head attention). Multimodal configs that keep the
        language model under ``text_config`` are read from there.
        """
        values, source = read_model_config(config)
        if "num_hidden_layers" not in values and isinstance(values.get("text_config"), Mapping):
            values, source = dict(values["text_config"]), f"{source} (text_config)"

        for key in _EXPERT_COUNT_KEYS:
            if isinstance(values.get(key), int) and values[key] > 1:
                raise UserError(
                    f"{source}: {key}={values[key]} is a mixture-of-experts model; the FLOPs formulas "
                    "of Appendix C (Eq. 18-19) cover dense models only"
                )

        def field(key: str) -> int:
            value = values.get(key)
            if value is None:
                raise UserError(f"{source}: missing field {key!r}, which FLOPs accounting needs (paper Eq. 18-19)")
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UserError(f"{source}: field {key!r} must be a positive integer, got {value!r}")
            return value

        hidden_size = field("hidden_size")
        if values.get("head_dim") is not None:
            head_dim = field("head_dim")
        else:
            head_dim = hidden_size // field("num_attention_heads")
        if values.get("num_key_value_heads") is not None:
            kv_heads = field("num_key_value_heads")
        else:
            kv_heads = field("num_attention_heads")
        return cls(
            num_layers=field("num_hidden_layers"),
            hidden_size=hidden_size,
            intermediate_size=field("intermediate_size"),
            vocab_size=field("vocab_size"),
            kv_dim=kv_heads * head_dim,
        )


def read_model_config(config) -> tuple[dict, str]:
    """The config as a plain dict, and words that name where it came from (for error messages)."""
    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise UserError(f"model config not found: {path} (give a model folder or its config.json)")
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise UserError(f"cannot read model config {path}: {error}") from None
        if not isinstance(values, dict):
            raise UserError(f"model config {path}: expected a JSON object, got {type(values).__name__}")
        return values, f"model config {path}"
    if isinstance(config, Mapping):
        return dict(config), "model config"
    if callable(getattr(config, "to_dict", None)):  # a transformers PretrainedConfig
        return config.to_dict(), f"model config ({type(config).__name__})"
    raise UserError(
        f"cannot read a model shape from {type(config).__name__}: "
        "give a PretrainedConfig, a config.json dict, or a path"
    )


# ----------------------------------------------------------------------------------------------
# Per-token and per-step FLOPs
# ----------------------------------------------------------------------------------------------


def _check_count(name: str, value: float) -> None:
    # numbers.Real admits numpy scalars from data pipelines; `not value >= 0` also rejects NaN.
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0 or math.isinf(value):
        raise UserError(f"{name} must be a finite number >= 0, got {value!r}")


def forward_flops_per_token(shape: ModelShape, seq_len: float) -> float:
    """Forward FLOPs per token at mean sequence length ``seq_len`` (paper Eq. 18-19).

    F_fwd(S) = F_dense + F_attn_core with
    F_dense = 2 * [L * (P_mlp + P_attn_linear) + P_vocab], P_mlp = 3 H H_ff,
    P_attn_linear = 2 H (H + D_kv), P_vocab = 2 V H, and F_attn_core = 4 S L H.
    P_vocab counts both the embedding and the LM head even when the weights are tied, as the paper does.
    """
    _check_count("seq_len", seq_len)
    L, H = shape.num_layers, shape.hidden_size
    mlp_params = 3 * H * shape.intermediate_size
    attention_linear_params = 2 * H * (H + shape.kv_dim)
    vocab_params = 2 * shape.vocab_size * H
    dense = 2 * (L * (mlp_params + attention_linear_params) + vocab_params)
    attention_core = 4 * seq_len * L * H
    return float(dense + attention_core)


def train_flops_per_token(shape: ModelShape, seq_len: float) -> float:
    """Training (forward + backward) FLOPs per token: 3 x F_fwd, since backward = 2 x forward
    (paper Eq. 20-21)."""
    return 3 * forward_flops_per_token(shape, seq_len)


def sft_step_flops(shape: ModelShape, batch_size: float, mean_seq_len: float) -> float:
    """FLOPs of one SFT step on ``batch_size`` sequences of mean length S (paper Eq. 21):
    F_SFT = 3 * B * S * F_fwd(S)."""
    _check_count("batch_size", batch_size)
    return batch_size * mean_seq_len * train_flops_per_token(shape, mean_seq_len)


def dapo_step_flops(
    shape: ModelShape, *, gen_batch: float, rounds: float, group_size: float, train_batch: float, seq_len: float
) -> float:
    """FLOPs of one DAPO step with dynamic sampling (paper Eq. 22).

    ``rounds`` (K) generation rounds of ``gen_batch`` prompts x ``group_size`` responses are forward
    only; the ``train_batch`` kept prompts x ``group_size`` responses are trained (3 x forward):
    F_DAPO = (K * B_gen + 3 * B_train) * G * S * F_fwd(S).
    """
    for name, value in (("gen_batch", gen_batch), ("rounds", rounds), ("group_size", group_size), ("train_batch", train_batch)):
        _check_count(name, value)
    return (rounds * gen_batch + 3 * train_batch) * group_size * seq_len * forward_flops_per_token(shape, seq_len)


def grpo_step_flops(shape: ModelShape, *, batch: float, group_size: float, seq_len: float) -> float:
    """FLOPs of one GRPO step (paper Eq. 23): DAPO with one round and B_gen = B_train = B, i.e.
    F_GRPO = 4 * B * G * S * F_fwd(S)."""
    return dapo_step_flops(shape, gen_batch=batch, rounds=1, group_size=group_size, train_batch=batch, seq_len=seq_len)


def hybrid_step_flops(
    shape: ModelShape, *, batch: float, group_size: float, n_expert: float, seq_len_on: float, seq_len_off: float
) -> float:
    """FLOPs of one LUFFY or SRFT step (paper Eq. 24).

    Per prompt, ``group_size`` (G) on-policy rollouts of mean length S_on and ``n_expert`` (N) expert
    trajectories of mean length S_off are each counted once forward and once trained:
    F_Hybrid = 4 * [B * G * S_on + B * N * S_off] * F_fwd.
    Eq. 24 prints a single F_fwd; we evaluate its attention term at each group's own mean length
    (F_fwd(S_on) for rollout tokens, F_fwd(S_off) for expert tokens), which is Eq. 24 exactly when
    S_on = S_off and otherwise charges each token the context it really attends over.
    """
    for name, value in (("batch", batch), ("group_size", group_size), ("n_expert", n_expert)):
        _check_count(name, value)
    on_policy = batch * group_size * seq_len_on * forward_flops_per_token(shape, seq_len_on)
    expert = batch * n_expert * seq_len_off * forward_flops_per_token(shape, seq_len_off)
    return 4 * (on_policy + expert)


def upt_step_flops(
    shape: ModelShape, *, group_size: float, seq_len_on: float, n_on: float, n_off: float, seq_len_off: float
) -> float:
    """FLOPs of one UPT step (paper Eq. 25-27).

    Generation of ``group_size`` sequences of mean length S_on (Eq. 25; Eq. 25 prints G with no batch
    factor, so pass the number of sequences generated in the step, B * G for B prompts), then training
    on ``n_on`` rollouts (GRPO) and ``n_off`` expert trajectories (SFT) that the gate kept (Eq. 26):
    F_UPT = [G * S_on + 3 * (N_on * S_on + N_off * S_off)] * F_fwd (Eq. 27).
    As in ``hybrid_step_flops``, rollout tokens use F_fwd(S_on) and expert tokens F_fwd(S_off).
    """
    for name, value in (("group_size", group_size), ("n_on", n_on), ("n_off", n_off)):
        _check_count(name, value)
    per_token_on = forward_flops_per_token(shape, seq_len_on)
    per_token_off = forward_flops_per_token(shape, seq_len_off)
    generation = group_size * seq_len_on * per_token_on
    training = 3 * (n_on * seq_len_on * per_token_on + n_off * seq_len_off * per_token_off)
    return generation + training


def tokens_flops(shape: ModelShape, seq_lens: Sequence[int], passes: int) -> float:
    """The exact FLOPs of one batch as a trainer counts it: Eq. 21 with B and S taken from the batch.

    Every token is charged F_fwd(S) with S the mean of ``seq_lens`` (prompt + response tokens of each
    sequence), times ``passes``: 3 for a training step (forward + backward, Eq. 20-21), 1 for
    generation or a no-grad log-prob pass. For a batch of B sequences all of length S this is
    passes * B * S * F_fwd(S), so ``passes=3`` reproduces ``sft_step_flops``.
    """
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise UserError(f"passes must be a positive integer (3 = train, 1 = forward only), got {passes!r}")
    lengths = list(seq_lens)
    for index, length in enumerate(lengths):
        _check_count(f"seq_lens[{index}]", length)
    if not lengths:
        return 0.0
    total_tokens = sum(lengths)
    mean_len = total_tokens / len(lengths)
    return passes * total_tokens * forward_flops_per_token(shape, mean_len)


# ----------------------------------------------------------------------------------------------
# Model FLOPs utilisation
# ----------------------------------------------------------------------------------------------

def peak_flops_for_chip(name: str, dtype: str = "bf16") -> float:
    """Peak dense FLOP/s of one chip, from the device layer's table (npu_retu.device.chips), for a
    chip key ("H100-SXM", "Ascend910B3") or a device name as the driver reports it."""
    from npu_retu.device.chips import CHIP_PEAK_FLOPS, peak_flops_for

    peak = peak_flops_for(name, dtype)
    if peak is None:
        raise UserError(f"no {dtype} peak FLOP/s known for chip {name!r}; known chips: {', '.join(CHIP_PEAK_FLOPS)}")
    return peak


def mfu(flops: float, seconds: float, peak_flops_per_second: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over peak, ``flops / (seconds * peak)``.

    ``peak_flops_per_second`` is the peak of all chips that did the work (one chip's peak times the
    number of chips), so the result is the fraction of the hardware's peak the model used.
    """
    _check_count("flops", flops)
    for name, value in (("seconds", seconds), ("peak_flops_per_second", peak_flops_per_second)):
        _check_count(name, value)
        if value == 0:
            raise UserError(f"{name} must be > 0")
    return flops / (seconds * peak_flops_per_second)


def step_mfu(step_flops: float, seconds: float, peak_flops_per_chip: float | None, num_chips: int) -> float | None:
    """The MFU of one step of a job on ``num_chips`` chips, as PaLM defines it (Chowdhery et al.
    2022, §4.1 and Appendix B): the job's achieved model FLOP/s over the peak FLOP/s of all its chips,

        MFU = (step_flops / seconds) / (num_chips * peak_flops_per_chip).

    ``step_flops`` is the whole step's count over all ranks as the RETU paper's Appendix C counts it
    (Eq. 21 for SFT, Eq. 22-27 for RL: model FLOPs, no recomputation, no padding); ``seconds`` is
    the step's wall time. With data parallelism every rank does 1/num_chips of the step in the same
    wall time, so the MFU does not change with the number of chips for the same work per chip (one
    chip's peak in the denominator would inflate it by num_chips). None when the chip's peak is
    unknown (a CPU: no MFU is claimed there).
    """
    if not peak_flops_per_chip:
        return None
    if num_chips < 1:
        raise UserError(f"num_chips must be >= 1, got {num_chips}")
    return mfu(step_flops, seconds, num_chips * peak_flops_per_chip)


# ----------------------------------------------------------------------------------------------
# The RETU SFT runs (paper §5.2, Appendix B.1, Table 4)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SftDataset:
    """One of RETU's SFT datasets as the paper trained on it (Qwen2.5-7B tokens)."""

    name: str
    mean_seq_len: int  # mean prompt + response tokens per example
    batch_size: int
    checkpoint_every: int  # steps between saved checkpoints


RETU_SFT_DATASETS: dict[str, SftDataset] = {
    d.name: d
    for d in (
        SftDataset("S1K", mean_seq_len=10011, batch_size=16, checkpoint_every=62),
        SftDataset("Easy102K", mean_seq_len=2217, batch_size=512, checkpoint_every=360),
        SftDataset("Uniform102K", mean_seq_len=3747, batch_size=512, checkpoint_every=360),
        SftDataset("Hard102K", mean_seq_len=8633, batch_size=512, checkpoint_every=360),
        SftDataset("SFT889K", mean_seq_len=3771, batch_size=512, checkpoint_every=360),
    )
}

# The x_sft column of the paper's Table 4 (exaFLOPs, Qwen2.5-7B), keyed by dataset and SFT step.
RETU_TABLE4_SFT_EXAFLOPS: dict[str, dict[int, float]] = {
    "S1K": {62: 0.6, 124: 1.1, 186: 1.7, 248: 2.3, 310: 2.9},
    "Easy102K": {360: 19.8, 720: 39.5, 1080: 59.3, 1440: 79.0, 1800: 98.8},
    "Uniform102K": {360: 34.7, 720: 69.3, 1080: 104.0, 1440: 138.7, 1800: 173.4},
    "Hard102K": {360: 89.3, 720: 178.5, 1080: 267.8, 1440: 357.0, 1800: 446.3},
    "SFT889K": {
        360: 34.9, 720: 69.8, 1080: 104.8, 1440: 139.7, 1800: 174.6, 3600: 349.2, 5400: 523.8,
        7200: 698.4, 9000: 873.0, 10800: 1047.6, 12600: 1222.2, 14080: 1365.8,
    },
}


def sft_flops_at_step(shape: ModelShape, dataset: SftDataset, step: int) -> float:
    """Cumulative SFT FLOPs after ``step`` steps on ``dataset``: step x Eq. 21."""
    _check_count("step", step)
    return step * sft_step_flops(shape, dataset.batch_size, dataset.mean_seq_len)


@dataclass(frozen=True)
class Table4Row:
    dataset: str
    step: int
    exaflops: float  # ours
    paper_exaflops: float


def retu_table4(shape: ModelShape | None = None) -> list[Table4Row]:
    """Our x_sft for every checkpoint of the paper's Table 4, next to the printed value.

    ``shape`` defaults to Qwen2.5-7B, the model Table 4 is about.
    """
    if shape is None:
        from npu_retu.models.presets import get_preset

        shape = ModelShape.from_hf_config(get_preset("Qwen2.5-7B"))
    rows = []
    for name, paper_by_step in RETU_TABLE4_SFT_EXAFLOPS.items():
        dataset = RETU_SFT_DATASETS[name]
        for step, paper in paper_by_step.items():
            rows.append(Table4Row(name, step, sft_flops_at_step(shape, dataset, step) / EXA, paper))
    return rows


# ----------------------------------------------------------------------------------------------
# What ``npu-retu flops`` asks and everything it prints
# ----------------------------------------------------------------------------------------------

# phase -> (the equation it implements, the inputs its step formula takes); ``npu-retu flops``
# takes each input as the option of the same name (batch_size: --batch-size)
STEP_FORMULAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "sft": ("Eq. 21", ("batch_size", "mean_len")),
    "dapo": ("Eq. 22", ("gen_batch", "rounds", "group_size", "train_batch", "seq_len")),
    "grpo": ("Eq. 23", ("batch", "group_size", "seq_len")),
    "hybrid": ("Eq. 24", ("batch", "group_size", "n_expert", "seq_len_on", "seq_len_off")),
    "upt": ("Eq. 25-27", ("group_size", "seq_len_on", "n_on", "n_off", "seq_len_off")),
}

TABLE4_MODEL = "Qwen2.5-7B"  # the model the paper's Table 4 is about


def input_flag(name: str) -> str:
    """The ``npu-retu flops`` option of a step-formula input: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class StepRequest:
    """The question ``npu-retu flops --phase`` asks; the fields are its options (errors name them as
    flags). The step-formula inputs a phase does not take must be None."""

    model: str  # a preset or a model folder / config.json
    phase: str  # a key of STEP_FORMULAS
    dataset: str | None = None  # sft: one of RETU_SFT_DATASETS, the default batch_size and mean_len
    batch_size: int | None = None
    mean_len: float | None = None
    gen_batch: int | None = None
    rounds: float | None = None
    train_batch: int | None = None
    batch: int | None = None
    group_size: int | None = None
    seq_len: float | None = None
    n_expert: int | None = None
    seq_len_on: float | None = None
    seq_len_off: float | None = None
    n_on: int | None = None
    n_off: int | None = None
    steps: int = 1
    checkpoints: str | None = None  # "360,720,1080": cumulative compute at these steps too
    chip: str | None = None  # for MFU, with step_seconds
    num_chips: int = 1
    step_seconds: float | None = None


def load_shape(model: str) -> ModelShape:
    """A preset name or a model folder / config.json; an existing path wins over a preset name."""
    from npu_retu.models.presets import find_preset, preset_names

    if Path(model).exists():
        return ModelShape.from_hf_config(model)
    preset = find_preset(model)
    if preset is None:
        raise UserError(
            f"--model {model!r} is neither a preset ({', '.join(preset_names())}) "
            "nor an existing model folder or config.json"
        )
    return ModelShape.from_hf_config(preset)


def shape_dict(shape: ModelShape) -> dict:
    return {
        "num_layers": shape.num_layers, "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size, "vocab_size": shape.vocab_size, "kv_dim": shape.kv_dim,
    }


def _parse_checkpoints(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        steps = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--checkpoints {text!r}: expected comma-separated whole step numbers, e.g. 360,720") from None
    if any(step < 0 for step in steps):
        raise UserError(f"--checkpoints {text!r}: step numbers must be >= 0")
    return steps


def step_report(request: StepRequest) -> dict:
    """Everything ``npu-retu flops --phase`` prints, as one JSON-ready dict: the model's shape, the
    step's inputs, FLOPs per token at each sequence length, FLOPs per step (Eq. 21-27), the total
    over ``steps``, cumulative compute at the checkpoints and, given a chip and a step time, MFU."""
    shape = load_shape(request.model)
    given = {name: getattr(request, name) for _, inputs in STEP_FORMULAS.values() for name in inputs}
    if request.phase == "sft" and request.dataset:
        dataset = RETU_SFT_DATASETS[request.dataset]
        given["batch_size"] = dataset.batch_size if given["batch_size"] is None else given["batch_size"]
        given["mean_len"] = dataset.mean_seq_len if given["mean_len"] is None else given["mean_len"]
    equation, needed = STEP_FORMULAS[request.phase]
    stray = sorted({input_flag(name) for name, value in given.items() if name not in needed and value is not None})
    if request.dataset and request.phase != "sft":
        stray.insert(0, "--dataset")
    if stray:
        raise UserError(f"--phase {request.phase} does not use {', '.join(stray)}")
    missing = [input_flag(name) for name in needed if given[name] is None]
    if missing:
        raise UserError(f"--phase {request.phase} needs {', '.join(missing)}")
    inputs = {name: given[name] for name in needed}
    if request.steps < 0:
        raise UserError(f"--steps must be >= 0, got {request.steps}")

    if request.phase == "sft":
        step_flops = sft_step_flops(shape, inputs["batch_size"], inputs["mean_len"])
        lengths = [inputs["mean_len"]]
    elif request.phase == "dapo":
        step_flops = dapo_step_flops(shape, **inputs)
        lengths = [inputs["seq_len"]]
    elif request.phase == "grpo":
        step_flops = grpo_step_flops(shape, **inputs)
        lengths = [inputs["seq_len"]]
    elif request.phase == "hybrid":
        step_flops = hybrid_step_flops(shape, **inputs)
        lengths = [inputs["seq_len_on"], inputs["seq_len_off"]]
    else:
        step_flops = upt_step_flops(shape, **inputs)
        lengths = [inputs["seq_len_on"], inputs["seq_len_off"]]

    per_token = []
    for seq_len in dict.fromkeys(lengths):  # S_on == S_off needs one row only
        forward = forward_flops_per_token(shape, seq_len)
        per_token.append({"seq_len": seq_len, "forward_flops": forward, "train_flops": 3 * forward})

    result = {
        "model": request.model,
        "shape": shape_dict(shape),
        "phase": request.phase,
        "equation": equation,
        "inputs": inputs,
        "per_token": per_token,
        "step_flops": step_flops,
        "step_exaflops": step_flops / EXA,
        "steps": request.steps,
        "total_exaflops": request.steps * step_flops / EXA,
        "checkpoints": [
            {"step": step, "exaflops": step * step_flops / EXA} for step in _parse_checkpoints(request.checkpoints)
        ],
        "mfu": None,
    }
    if (request.chip is None) != (request.step_seconds is None):
        raise UserError("MFU needs both --chip and --step-seconds")
    if request.chip is not None:
        if request.num_chips < 1:
            raise UserError(f"--num-chips must be >= 1, got {request.num_chips}")
        peak = peak_flops_for_chip(request.chip)
        result["mfu"] = {
            "chip": request.chip, "num_chips": request.num_chips, "peak_flops_per_chip": peak,
            "step_seconds": request.step_seconds,
            "mfu": mfu(step_flops, request.step_seconds, peak * request.num_chips),
        }
    return result


def table4_report(model: str = TABLE4_MODEL) -> dict:
    """Everything ``npu-retu flops --table4`` prints: Eq. 21 per RETU SFT dataset for ``model``, and
    our x_sft next to the paper's at every checkpoint of Table 4."""
    shape = load_shape(model)
    datasets = {}
    for name, dataset in RETU_SFT_DATASETS.items():
        forward = forward_flops_per_token(shape, dataset.mean_seq_len)
        step_flops = sft_step_flops(shape, dataset.batch_size, dataset.mean_seq_len)
        datasets[name] = {
            "mean_seq_len": dataset.mean_seq_len, "batch_size": dataset.batch_size,
            "checkpoint_every": dataset.checkpoint_every,
            "forward_flops_per_token": forward, "train_flops_per_token": 3 * forward,
            "step_flops": step_flops, "step_exaflops": step_flops / EXA,
        }
    rows = [
        {"dataset": r.dataset, "step": r.step, "exaflops": r.exaflops, "paper_exaflops": r.paper_exaflops,
         "difference": r.exaflops - r.paper_exaflops}
        for r in retu_table4(shape)
    ]
    return {"model": model, "shape": shape_dict(shape), "datasets": datasets, "rows": rows}
