"""The embedded default: the synthetic task's data sets, a tiny tokenizer and a tiny Qwen2 base model.

Nothing can be downloaded on the machines this toolkit is tested on, so ``make demo`` and the tests
train on data and a model built here, on first use, into a cache folder::

    $NPU_RETU_CACHE (default ~/.cache/npu-retu)/embedded-v{EMBEDDED_VERSION}/
        sft-val.jsonl  rl-test.jsonl         held-out sets (their problems are in no training set)
        rl-train.jsonl  sft-uniform-2k.jsonl ...
        rl-uniform-1k.jsonl  mix-uniform-1k.jsonl ...
        pretrain-text.jsonl                  {"text": ...} documents for the base model
        tokenizer/                           byte-level BPE, ChatML template
        base/                                the pretrained base model (HF layout, tokenizer inside)

Training sets: ``sft-{easy|uniform|hard}-{N}`` (AM-DeepSeek rows with an R1-style expert
trajectory), ``rl-{easy|uniform|hard}-{N}`` (Skywork-OR1 prompts with ground truth), and
``mix-{easy|uniform|hard}-{N}``: the very problems of ``rl-{d}-{N}`` (same order) written as
AM-DeepSeek rows with an expert trajectory each, drawn like the sft sets' (its own stream), i.e. RL
prompts augmented with expert trajectories, like the paper's MIX37K, for LUFFY / SRFT / UPT.

Configs name them ``embedded:<name>`` (``resolve``). Every artifact is built in a ``.tmp-*`` folder
or file and renamed into place under an ``fcntl`` lock, so parallel processes never race and never
see half-built artifacts; a leftover ``.tmp-*`` from a killed build is ignored.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from npu_retu.data import synthetic
from npu_retu.errors import UserError

if TYPE_CHECKING:  # heavy imports stay out of `npu-retu --help`
    from transformers import PreTrainedTokenizerFast, Qwen2Config

# Bump when the generator, the tokenizer or the model recipe changes: a new version caches apart.
EMBEDDED_VERSION = 4
PREFIX = "embedded:"


@dataclass(frozen=True)
class BaseRecipe:
    """How one version's base model is built (every version stays loadable by name,
    ``embedded:v4/base``, for reproducing an old report once a newer one is the default).

    ``worked_percent``: the share of its pretraining problems that carry a textbook worked solution
    instead of a bare answer; ``worked_wordings``: only problems in the first that many of the task's
    ``synthetic.WORDINGS`` wordings can be worked (None: any); ``reword_worked``: instead, every worked
    problem is written in one of those wordings, so the worked volume stays ``worked_percent`` while
    the base sees worked solutions for those wordings only. ``threads``: torch threads of its
    pretraining (None: torch's count, as v4 was built). What a base learns depends on the run itself
    (docs/embedded-default.md, "Toward v5") and another thread count reorders the float sums, so a
    pinned count makes the base the same model on every machine with the same torch build and CPU
    instruction set. (Here one thread built a 2000-step base in 29.6-31.3 min beside another build;
    two threads, alone, in 24.7 min.) ``seed``: the model's initialisation and batch order.
    ``steps``: pretraining steps (None: ``PRETRAIN_STEPS``).
    """

    worked_percent: int = 0
    worked_wordings: int | None = None
    reword_worked: bool = False
    threads: int | None = None
    seed: int = 0
    steps: int | None = None


# The calibration variants (``base-worked-<P>[-wordings-<W>|-reworded-<W>][-steps-<N>][-seed-<S>]``)
# train at one thread.
CALIBRATION_THREADS = 1

# Each data set draws from its own seed, so adding one never changes another.
SEEDS = {
    "sft-val": 9_001,
    "rl-test": 9_002,
    "rl-train": 9_003,
    "pretrain": 9_004,
    "pretrain-drills": 9_006,
    "tokenizer": 9_005,
    "sft-easy": 1_001,
    "sft-uniform": 1_002,
    "sft-hard": 1_003,
    "rl-easy": 2_001,
    "rl-uniform": 2_002,
    "rl-hard": 2_003,
    "mix-easy": 3_001,  # the trajectories only: a mix set's problems are its rl set's (rl-<d> seed)
    "mix-uniform": 3_002,
    "mix-hard": 3_003,
    "base-model": 0,  # a calibration variant's unless its name gives ``-seed-<S>``
}
RECIPES = {4: BaseRecipe(seed=SEEDS["base-model"])}
SFT_VAL_SIZE = 199  # like the paper's Val-199
RL_TEST_SIZE = 500
RL_TRAIN_SIZE = 10_000
PRETRAIN_DOCS = 20_000  # bare-answer problems; plus as many practice or read-back documents
PRACTICE_SHARE = 0.5  # of those: arithmetic practice; the rest read back another problem (a copy drill)
TOKENIZER_CORPUS_PROBLEMS = 3_000
HELD_OUT_DIFFICULTY = "uniform"

# tokenizer
PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
THINK_TOKENS = ("<think>", "</think>")
TOKENIZER_VOCAB = 510  # BPE incl. the 3 special tokens; + <think>, </think> = 512 ids, no padding rows
# Single digits, letter runs with an optional leading space, punctuation runs, whitespace.
# Digits stand alone (as in Qwen) so every number is spelled digit by digit.
PRETOKENIZE_PATTERN = r"'(?:[sdmt]|ll|ve|re)| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
# ChatML as Qwen renders it: an optional system turn, then turns; the assistant content sits in
# {% generation %} so `return_assistant_tokens_mask=True` marks the tokens SFT trains on.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

# tiny model (calibrated: see README "The embedded default")
MODEL_SHAPE = dict(
    hidden_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=512,
    max_position_embeddings=1024,
)
PRETRAIN_STEPS = 2000
PRETRAIN_BATCH = 32
PRETRAIN_LR = 3e-3


# --------------------------------------------------------------------------------------------
# tokenizer


def build_tokenizer(out_dir: str | Path, corpus_texts: list[str]) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``corpus_texts`` and save it (``AutoTokenizer`` loads ``out_dir``).

    Byte level, so any UTF-8 text encodes; digits are split one per token; ``<|endoftext|>`` pads,
    ``<|im_end|>`` ends a chat turn (eos), ``<think>`` / ``</think>`` are added tokens that decoding
    keeps.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD_TOKEN, IM_START, IM_END]
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # The trainer must not merge across the think tags: strip them from the corpus, add them after.
    tag = re.compile("|".join(re.escape(t) for t in THINK_TOKENS))
    bpe.train_from_iterator((tag.sub("", t) for t in corpus_texts), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        extra_special_tokens=[IM_START],
        chat_template=CHAT_TEMPLATE,
        model_max_length=MODEL_SHAPE["max_position_embeddings"],
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.add_tokens(list(THINK_TOKENS), special_tokens=False)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def chat_template_fn(tokenizer: Any) -> Callable[[list[dict[str, str]]], str]:
    """``messages -> text`` with the tokenizer's chat template (what pretrain_text expects)."""
    return lambda messages: tokenizer.apply_chat_template(messages, tokenize=False)


# --------------------------------------------------------------------------------------------
# model


def tiny_model_config(tokenizer: Any) -> Qwen2Config:
    """A tiny Qwen2 (``MODEL_SHAPE``), tied embeddings, vocab padded to a multiple of 64.

    ``eos_token_id`` is ``[<|im_end|>, <|endoftext|>]``, so the generation config a model derives
    from it (``model.generation_config``) stops at either; see also ``tiny_generation_config``.
    """
    from transformers import Qwen2Config

    vocab = 64 * math.ceil(len(tokenizer) / 64)
    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    im_end_id = tokenizer.convert_tokens_to_ids(IM_END)
    return Qwen2Config(
        vocab_size=vocab,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10_000.0},
        rms_norm_eps=1e-6,
        bos_token_id=pad_id,  # as Qwen: no BOS is prepended, <|endoftext|> stands in
        eos_token_id=[im_end_id, pad_id],
        pad_token_id=pad_id,
        **MODEL_SHAPE,
    )


def tiny_generation_config(tokenizer: Any) -> Any:
    """Greedy by default; stops at ``<|im_end|>`` (end of a chat turn) or ``<|endoftext|>``."""
    from transformers import GenerationConfig

    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    im_end_id = tokenizer.convert_tokens_to_ids(IM_END)
    return GenerationConfig(bos_token_id=pad_id, eos_token_id=[im_end_id, pad_id], pad_token_id=pad_id, do_sample=False)


def build_model(tokenizer: Any, seed: int) -> Any:
    """A freshly initialised ``Qwen2ForCausalLM`` of ``tiny_model_config`` (same seed, same weights)."""
    import torch
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(tiny_model_config(tokenizer))
    model.generation_config = tiny_generation_config(tokenizer)
    return model


# --------------------------------------------------------------------------------------------
# base-model pretraining


def _lr_at(step: int, steps: int, warmup: int, lr: float, min_ratio: float = 0.1) -> float:
    """Linear warmup, then cosine decay to ``min_ratio * lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def pretrain_base(
    out_dir: str | Path,
    *,
    steps: int = PRETRAIN_STEPS,
    seed: int = SEEDS["base-model"],
    tokenizer: Any = None,
    texts: list[str] | None = None,
    batch_size: int = PRETRAIN_BATCH,
    lr: float = PRETRAIN_LR,
    warmup: int | None = None,
    weight_decay: float = 0.1,
    log: Callable[[dict[str, float]], None] | None = None,
) -> Path:
    """Pretrain the tiny base model on bare-answer documents and save it in HF layout.

    Next-token loss on right-padded batches of whole documents (each ending in ``<|endoftext|>``),
    AdamW with linear warmup + cosine decay, one shuffled pass after another. Writes safetensors,
    config, generation config and the tokenizer to ``out_dir`` and returns it. The tokenizer and
    texts default to the embedded ones (``embedded:tokenizer``, ``embedded:pretrain-text``).
    """
    import torch
    from transformers import AutoTokenizer

    from npu_retu.report.progress import Progress

    if steps < 1:
        raise UserError(f"pretrain_base: steps must be >= 1, got {steps}")
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(resolve("embedded:tokenizer"), trust_remote_code=False)
    if texts is None:
        texts = read_pretrain_texts(resolve("embedded:pretrain-text"))
    if not texts:
        raise UserError("pretrain_base: no pretraining texts")
    eos = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    documents = [ids + [eos] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    model = build_model(tokenizer, seed)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.95),
    )
    warmup = max(1, steps // 20) if warmup is None else warmup
    order_rng = random.Random(seed)
    order: list[int] = []
    # the first build takes minutes: a bar on a terminal, else a line every NPU_RETU_PROGRESS_INTERVAL seconds
    progress = Progress(steps, "embedded base pretraining")
    for step in range(steps):
        if len(order) < batch_size:
            more = list(range(len(documents)))
            order_rng.shuffle(more)
            order += more
        batch = [documents[i] for i in order[:batch_size]]
        del order[:batch_size]
        input_ids, labels, attention = _pad_batch(batch, eos)
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, steps, warmup, lr)
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if log is not None:
            log({"step": step + 1, "loss": loss.item(), "lr": optimizer.param_groups[0]["lr"]})
        progress.update(1, loss=f"{loss.item():.3f}")
    progress.close()

    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _pad_batch(batch: list[list[int]], pad_id: int) -> tuple[Any, Any, Any]:
    """Right-pad to the longest document; padded positions get label -100 (no loss)."""
    import torch

    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
    return input_ids, labels, attention


def read_pretrain_texts(path: str | Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


# --------------------------------------------------------------------------------------------
# the data sets


def held_out_problems() -> tuple[list[synthetic.Problem], list[synthetic.Problem]]:
    """(sft-val, rl-test): drawn first from their own seeds; rl-test also avoids sft-val."""
    val = synthetic.generate_problems(SFT_VAL_SIZE, HELD_OUT_DIFFICULTY, SEEDS["sft-val"])
    test = synthetic.generate_problems(
        RL_TEST_SIZE, HELD_OUT_DIFFICULTY, SEEDS["rl-test"], exclude=frozenset(p.key for p in val)
    )
    return val, test


def held_out_keys() -> frozenset:
    """The identities of every held-out problem; every training set excludes them."""
    val, test = held_out_problems()
    return frozenset(p.key for p in val + test)


def sft_rows(problems: list[synthetic.Problem], seed: int) -> list[dict[str, Any]]:
    """SFT rows with trajectory phrasing drawn from its own stream (a prefix of a set is a smaller set)."""
    rng = random.Random(f"trajectory:{seed}")
    return [synthetic.sft_row(p, rng) for p in problems]


def parse_size(text: str) -> int:
    """``1k`` -> 1000, ``100k`` -> 100000, ``250`` -> 250."""
    match = re.fullmatch(r"(\d+)(k?)", text.lower())
    if match is None or int(match.group(1)) == 0:
        raise UserError(f"data set size {text!r} is not valid; use a positive integer or a number of thousands like 2k")
    return int(match.group(1)) * (1000 if match.group(2) else 1)


_SFT_NAME = re.compile(r"sft-(easy|uniform|hard)-(\w+)")
_RL_NAME = re.compile(r"rl-(easy|uniform|hard)-(\w+)")
_MIX_NAME = re.compile(r"mix-(easy|uniform|hard)-(\w+)")
_WORKED_NAME = re.compile(
    r"(base|pretrain-text)-worked-(\d+)(?:-(wordings|reworded)-(\d+))?(?:-steps-(\d+))?(?:-seed-(\d+))?"
)
FIXED_NAMES = ("base", "tokenizer", "sft-val", "rl-train", "rl-test", "pretrain-text")


def _build_sft(name: str, out: Path) -> None:
    match = _SFT_NAME.fullmatch(name)
    assert match is not None
    difficulty, size = match.group(1), parse_size(match.group(2))
    seed = SEEDS[f"sft-{difficulty}"]
    problems = synthetic.generate_problems(size, difficulty, seed, exclude=held_out_keys())
    synthetic.write_jsonl(out, sft_rows(problems, seed))


def rl_set_problems(difficulty: str, size: int) -> list[synthetic.Problem]:
    """The problems of ``rl-{difficulty}-{size}`` (and of ``mix-{difficulty}-{size}``), in order."""
    return synthetic.generate_problems(size, difficulty, SEEDS[f"rl-{difficulty}"], exclude=held_out_keys())


def _build_rl_set(difficulty: str, size: int, out: Path) -> None:
    """RL prompts of one difficulty; drawn from their own seed, disjoint from the held-out sets."""
    synthetic.write_jsonl(out, [synthetic.rl_row(p) for p in rl_set_problems(difficulty, size)])


def _build_mix_set(difficulty: str, size: int, out: Path) -> None:
    """The rl set's problems as AM-DeepSeek SFT rows, each with an expert trajectory drawn by the sft
    sets' generator from the mix set's own stream (``SEEDS["mix-<d>"]``)."""
    synthetic.write_jsonl(out, sft_rows(rl_set_problems(difficulty, size), SEEDS[f"mix-{difficulty}"]))


def _build_sft_val(out: Path) -> None:
    val, _ = held_out_problems()
    synthetic.write_jsonl(out, sft_rows(val, SEEDS["sft-val"]))


def _build_rl_test(out: Path) -> None:
    _, test = held_out_problems()
    synthetic.write_jsonl(out, [synthetic.rl_row(p) for p in test])


def _build_rl_train(out: Path) -> None:
    problems = synthetic.generate_problems(RL_TRAIN_SIZE, "uniform", SEEDS["rl-train"], exclude=held_out_keys())
    synthetic.write_jsonl(out, [synthetic.rl_row(p) for p in problems])


def _tokenizer_corpus() -> list[str]:
    """Problems, trajectories and answers (training side only) for the BPE merges."""
    seed = SEEDS["tokenizer"]
    problems = synthetic.generate_problems(TOKENIZER_CORPUS_PROBLEMS, "uniform", seed, exclude=held_out_keys())
    rng = random.Random(seed)
    texts = []
    for p in problems:
        # role names as the chat template writes them, so "user" and "assistant" merge too
        texts.append("user\n" + p.text)
        # (the read-back line is already in the pretraining texts below; leaving it out here keeps
        # the tokenizer, and so the base model, independent of the trajectory format)
        texts.append("assistant\n" + synthetic.expert_trajectory(p, rng, read_back=False))
        texts.append(synthetic.pretrain_text(p, rng))
    return texts


def _build_tokenizer(out: Path) -> None:
    build_tokenizer(out, _tokenizer_corpus())


def _build_pretrain_text(
    out: Path, worked_share: float, version: int, wordings: int | None = None, reword: bool = False
) -> None:
    """The base model's pretraining documents; ``worked_share`` of the problems get a textbook
    worked solution instead of a bare answer (``RECIPES`` per version, or a calibration
    variant ``embedded:pretrain-text-worked-<percent>``). With 0 it is v4's text, byte for byte
    (whether a problem is worked draws from its own RNG). ``wordings``: only problems in the first
    that many of the ``synthetic.WORDINGS`` problem wordings can be worked (``...-wordings-<W>``),
    the rest keep bare answers, so the base has seen worked solutions for part of the task only.
    ``reword``: instead, each worked problem is rewritten in one of the first ``wordings`` wordings
    (drawn from its own RNG), so the worked share stays ``worked_share`` (``...-reworded-<W>``)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve(f"{PREFIX}v{version}/tokenizer"), trust_remote_code=False)
    seed = SEEDS["pretrain"]
    problems = synthetic.generate_problems(PRETRAIN_DOCS, "uniform", seed, exclude=held_out_keys())
    drills = synthetic.generate_problems(PRETRAIN_DOCS, "uniform", SEEDS["pretrain-drills"], exclude=held_out_keys())
    rng = random.Random(f"pretrain-text:{seed}")
    worked_rng = random.Random(f"pretrain-worked:{seed}")
    reword_rng = random.Random(f"pretrain-reworded:{seed}")
    render = chat_template_fn(tokenizer)
    docs = []
    # bare-answer problems, each followed by arithmetic practice or by another problem read back
    # ("In short: start 7; (1) add 5; ..."): the read-backs teach the model to find "(k)" in its
    # context and copy what follows, which reading a problem needs
    for p, drill in zip(problems, drills):
        worked = worked_share > 0 and worked_rng.random() < worked_share
        if wordings is not None and reword and worked:  # write it in one of the first wordings
            p = synthetic.reworded(p, reword_rng.randrange(wordings))
        elif wordings is not None and not reword:  # work it only if it is in one of them
            worked = worked and synthetic.wording_of(p) < wordings
        docs.append({"text": synthetic.pretrain_text(p, rng, render, worked=worked)})
        if rng.random() < PRACTICE_SHARE:
            docs.append({"text": synthetic.practice_text(rng)})
        else:
            docs.append({"text": f"{drill.text}\n{synthetic.restatement(drill)}\n"})
    synthetic.write_jsonl(out, docs)


def base_pretrain_steps(recipe_steps: int | None = None) -> int:
    """Pretraining steps of a base: its recipe's (None: ``PRETRAIN_STEPS``) unless
    ``$NPU_RETU_BASE_STEPS`` asks for another number (the test suite builds a quick, weaker base this
    way; it is cached under its own name, ``base-<N>steps``, so it never replaces the real one)."""
    raw = os.environ.get("NPU_RETU_BASE_STEPS", "")
    if not raw:
        return recipe_steps or PRETRAIN_STEPS
    if not raw.isdigit() or int(raw) < 1:
        raise UserError(f"NPU_RETU_BASE_STEPS must be a positive integer, got {raw!r}")
    return int(raw)


def _steps_override_suffix(recipe_steps: int | None) -> str:
    """``-<N>steps`` when ``$NPU_RETU_BASE_STEPS`` overrides a base's own steps, so it caches apart."""
    steps = base_pretrain_steps(recipe_steps)
    return "" if steps == (recipe_steps or PRETRAIN_STEPS) else f"-{steps}steps"


def _build_base(out: Path, pretrain_text: str, version: int, threads: int | None, seed: int, steps: int) -> None:
    """A base model of ``version``'s recipe on the pretraining text named ``pretrain_text``, trained
    ``steps`` steps at ``threads`` torch threads (None: torch's count) from model seed ``seed``."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve(f"{PREFIX}v{version}/tokenizer"), trust_remote_code=False)
    texts = read_pretrain_texts(resolve(f"{PREFIX}v{version}/{pretrain_text}"))
    with _torch_threads(threads):
        pretrain_base(out, steps=steps, seed=seed, tokenizer=tokenizer, texts=texts)


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block at ``threads`` torch threads (None: leave them), then restore the count."""
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------
# the resolver


def cache_root(version: int = EMBEDDED_VERSION) -> Path:
    """``$NPU_RETU_CACHE`` (default ``~/.cache/npu-retu``)/embedded-v{version}."""
    base = os.environ.get("NPU_RETU_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "npu-retu")
    return Path(base) / f"embedded-v{version}"


_VERSIONED = re.compile(r"v(\d+)/(.+)")


def split_version(name: str) -> tuple[int, str]:
    """``v4/base`` -> (4, ``base``); a name without a version is the current one's."""
    match = _VERSIONED.fullmatch(name)
    if match is None:
        return EMBEDDED_VERSION, name
    version = int(match.group(1))
    if version not in RECIPES:
        known = ", ".join(f"v{v}" for v in sorted(RECIPES))
        raise UserError(f"{PREFIX + name}: no embedded default v{version}; the versions are {known}")
    return version, match.group(2)


def is_embedded(path_str: str | os.PathLike) -> bool:
    """Whether a config value names an embedded artifact (``embedded:...``)."""
    return isinstance(path_str, str) and path_str.startswith(PREFIX)


def _artifact(name: str, version: int = EMBEDDED_VERSION) -> tuple[str, Callable[[Path], None]]:
    """(file or folder name in the cache, builder) for an embedded name without prefix or version."""
    recipe = RECIPES[version]
    fixed: dict[str, tuple[str, Callable[[Path], None]]] = {
        "base": (
            "base" + _steps_override_suffix(recipe.steps),
            lambda out: _build_base(
                out, "pretrain-text", version, recipe.threads, recipe.seed, base_pretrain_steps(recipe.steps)
            ),
        ),
        "tokenizer": ("tokenizer", _build_tokenizer),
        "sft-val": ("sft-val.jsonl", _build_sft_val),
        "rl-train": ("rl-train.jsonl", _build_rl_train),
        "rl-test": ("rl-test.jsonl", _build_rl_test),
        "pretrain-text": (
            "pretrain-text.jsonl",
            lambda out: _build_pretrain_text(
                out, recipe.worked_percent / 100, version, recipe.worked_wordings, recipe.reword_worked
            ),
        ),
    }
    if name in fixed:
        return fixed[name]
    match = _WORKED_NAME.fullmatch(name)
    if match is not None:  # calibration variants (issue 18): another worked share on the same recipe
        kind, percent = match.group(1), int(match.group(2))
        mode, wordings = match.group(3), None if match.group(4) is None else int(match.group(4))
        steps = None if match.group(5) is None else int(match.group(5))
        seed = SEEDS["base-model"] if match.group(6) is None else int(match.group(6))
        if not 0 < percent <= 100:
            raise UserError(f"{PREFIX + name}: the worked share is a percentage in 1..100, got {percent}")
        if wordings is not None and not 0 < wordings < synthetic.WORDINGS:
            raise UserError(
                f"{PREFIX + name}: the worked wordings are a count in 1..{synthetic.WORDINGS - 1} "
                f"(of the task's {synthetic.WORDINGS}), got {wordings}"
            )
        text = f"pretrain-text-worked-{percent}" + ("" if wordings is None else f"-{mode}-{wordings}")
        if steps is not None and steps < 1:
            raise UserError(f"{PREFIX + name}: the pretraining steps are a count >= 1, got {steps}")
        if kind == "pretrain-text":
            if match.group(5) is not None or match.group(6) is not None:
                raise UserError(
                    f"{PREFIX + name}: pretraining steps (-steps-<N>) and a model seed (-seed-<S>) name a base, "
                    "not its pretraining text"
                )
            return f"{text}.jsonl", lambda out: _build_pretrain_text(
                out, percent / 100, version, wordings, reword=mode == "reworded"
            )
        name_suffix = ("" if steps is None else f"-steps-{steps}") + ("" if match.group(6) is None else f"-seed-{seed}")
        cached = "base" + text[len("pretrain-text"):] + name_suffix + _steps_override_suffix(steps)
        return cached, lambda out: _build_base(
            out, text, version, CALIBRATION_THREADS, seed, base_pretrain_steps(steps)
        )
    match = _SFT_NAME.fullmatch(name)
    if match is not None:
        size = parse_size(match.group(2))
        canonical = f"sft-{match.group(1)}-{size // 1000}k" if size % 1000 == 0 else f"sft-{match.group(1)}-{size}"
        return f"{canonical}.jsonl", lambda out: _build_sft(canonical, out)
    match = _RL_NAME.fullmatch(name)
    if match is not None:
        difficulty, size = match.group(1), parse_size(match.group(2))
        canonical = f"rl-{difficulty}-{size // 1000}k" if size % 1000 == 0 else f"rl-{difficulty}-{size}"
        return f"{canonical}.jsonl", lambda out: _build_rl_set(difficulty, size, out)
    match = _MIX_NAME.fullmatch(name)
    if match is not None:
        difficulty, size = match.group(1), parse_size(match.group(2))
        canonical = f"mix-{difficulty}-{size // 1000}k" if size % 1000 == 0 else f"mix-{difficulty}-{size}"
        return f"{canonical}.jsonl", lambda out: _build_mix_set(difficulty, size, out)
    raise UserError(
        f"unknown embedded name {PREFIX + name!r}; choose one of "
        + ", ".join(PREFIX + n for n in FIXED_NAMES)
        + f", {PREFIX}sft-{{easy|uniform|hard}}-{{N}}, {PREFIX}rl-{{easy|uniform|hard}}-{{N}}, "
        + f"{PREFIX}mix-{{easy|uniform|hard}}-{{N}} (N like 1k, 2k, 10k, 100k or a plain integer), "
        + f"{PREFIX}base-worked-{{P}}[-wordings-{{W}}|-reworded-{{W}}][-seed-{{S}}] / "
        + f"{PREFIX}pretrain-text-worked-{{P}}[-wordings-{{W}}|-reworded-{{W}}] "
        + "(P % of the pretraining problems worked; only those in the first W wordings, or all of them "
        + "rewritten into those; model seed S); "
        + f"an older version's as {PREFIX}v4/<name>"
    )


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``lock_path``: across processes and across threads (own open file)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def resolve(name: str) -> Path:
    """The path of an embedded artifact (``embedded:base``, ``embedded:sft-uniform-2k``, ...), built on first use.

    A build happens in a ``.tmp-*`` path under a per-artifact lock and is renamed into place, so a
    concurrent caller waits and then reuses it; a build that fails leaves nothing behind.
    """
    bare = name[len(PREFIX) :] if is_embedded(name) else name
    version, bare = split_version(bare)
    filename, build = _artifact(bare, version)
    root = cache_root(version)
    final = root / filename
    if final.exists():
        return final
    with _locked(root / f".lock-{filename}"):
        if final.exists():  # another process built it while we waited
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{filename}-", dir=root))
        try:
            target = tmp / filename
            build(target)
            os.replace(target, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def resolve_all(names: list[str] | None = None, log: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Resolve several names (default: everything the demo uses); returns name -> path."""
    names = names or [PREFIX + n for n in FIXED_NAMES] + [PREFIX + "sft-uniform-2k"]
    paths = {}
    for name in names:
        started = time.monotonic()
        paths[name] = resolve(name)
        if log is not None:
            log(f"{name}: {paths[name]} ({time.monotonic() - started:.1f} s)")
    return paths
