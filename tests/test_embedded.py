"""The embedded default: tokenizer, tiny Qwen2 config, base-model pretraining, the cached resolver."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from npu_retu.models import embedded
from npu_retu.data import synthetic
from npu_retu.errors import UserError

# A small pretraining corpus keeps the base-model build to seconds in tests.
TEST_PRETRAIN_DOCS = 400
TEST_PRETRAIN_STEPS = 3


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private embedded cache for this module, with a test-sized base-model recipe."""
    root = tmp_path_factory.mktemp("npu-retu-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NPU_RETU_CACHE", str(root))
        mp.setattr(embedded, "PRETRAIN_DOCS", TEST_PRETRAIN_DOCS)
        mp.setattr(embedded, "PRETRAIN_STEPS", TEST_PRETRAIN_STEPS)
        mp.setenv("NPU_RETU_BASE_STEPS", str(TEST_PRETRAIN_STEPS))  # conftest asks for 60: not here
        mp.setattr(embedded, "PRETRAIN_BATCH", 8)
        yield root


@pytest.fixture(scope="module")
def tokenizer(cache):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded.resolve("embedded:tokenizer"))


def _keys_of_texts(texts):
    """Problem identities read back from problem texts (independently of the generator)."""
    names = {"add": "add", "subtract": "sub", "multiply by": "mul"}
    keys = set()
    for text in texts:
        start = int(re.search(r"\d", text).group(0))
        ops = tuple((names[m.group(1)], int(m.group(2))) for m in re.finditer(r"\b(add|subtract|multiply by) (\d)\b", text.lower()))
        keys.add((start, ops))
    return keys


def _read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


# --------------------------------------------------------------------------------------------
# tokenizer


def test_tokenizer_size_and_special_tokens(tokenizer):
    assert 400 <= len(tokenizer) <= 600
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")}
    assert len(set(ids.values())) == 5
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id == ids["<|endoftext|>"]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == ids["<|im_end|>"]
    # the think tags are single tokens and survive decoding without special tokens
    enc = tokenizer("<think>\nx\n</think>", add_special_tokens=False)["input_ids"]
    assert enc[0] == ids["<think>"] and enc[-1] == ids["</think>"]
    assert tokenizer.decode(enc, skip_special_tokens=True) == "<think>\nx\n</think>"
    assert tokenizer.decode([ids["<|im_end|>"]], skip_special_tokens=True) == ""


@pytest.mark.parametrize(
    "text",
    [
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
        "How many clips did Natalia sell altogether in April and May?",
        r"Let $f(x) = \frac{3x^2 - 2}{\sqrt{x+1}}$. Find $\int_0^{1} f(x)\,dx$ and \boxed{\dfrac{5}{16}}.",
        "ünïcödé — 日本語のテキスト, emoji 🙂🚀, tabs\tand\r\nnewlines\n\n  indented  ",
        "<think>\nAdd 5: 7 + 5 = 12, keep 2.\n</think>\n\nThe result is \\boxed{2}.",
        "",
    ],
)
def test_tokenizer_round_trips_any_utf8(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert all(0 <= i < len(tokenizer) for i in ids)


def test_digits_are_one_per_token(tokenizer):
    vocab = tokenizer.get_vocab()
    for token, idx in vocab.items():
        assert sum(ch.isdigit() for ch in tokenizer.decode([idx])) <= 1, token
    ids = tokenizer("12345 + 2024 = 14369", add_special_tokens=False)["input_ids"]
    digits = [tokenizer.decode([i]) for i in ids if any(c.isdigit() for c in tokenizer.decode([i]))]
    assert digits == list("12345") + list("2024") + list("14369")


def test_words_of_the_task_merge(tokenizer):
    # the BPE learnt the task's words: far fewer tokens than bytes
    text = "Start with 7. Add 5, multiply by 3, then subtract 4, working modulo 10 after each step."
    assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) < len(text.encode()) / 2


def test_chat_template_is_chatml(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Start with 7. Add 5."},
        {"role": "assistant", "content": "<think>\nok\n</think>\n\nThe result is \\boxed{2}."},
    ]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nStart with 7. Add 5.<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nok\n</think>\n\nThe result is \\boxed{2}.<|im_end|>\n"
    )
    assert tokenizer.apply_chat_template(messages[1:2], tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>user\nStart with 7. Add 5.<|im_end|>\n<|im_start|>assistant\n"
    )
    # the rendered text survives encode + decode, and the assistant mask covers exactly the reply
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert tokenizer.decode(ids) == tokenizer.apply_chat_template(messages, tokenize=False)
    assert tokenizer.decode([i for i, m in zip(ids, mask) if m]) == messages[2]["content"] + "<|im_end|>"


def test_build_tokenizer_saves_an_auto_loadable_folder(tmp_path):
    from transformers import AutoTokenizer

    corpus = ["Start with 3. Add 4, then multiply by 2. What is the result?", "3 + 4 = 7, keep 7."] * 50
    built = embedded.build_tokenizer(tmp_path / "tok", corpus)
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    text = "Start with 3. Add 4 → 7 ≡ 7 (mod 10) <think>"
    assert loaded(text)["input_ids"] == built(text)["input_ids"]
    assert loaded.decode(loaded(text)["input_ids"]) == text
    assert loaded.chat_template == embedded.CHAT_TEMPLATE


# --------------------------------------------------------------------------------------------
# model


def test_tiny_model_config_is_a_qwen2_that_instantiates(tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = embedded.tiny_model_config(tokenizer)
    assert isinstance(config, Qwen2Config) and config.model_type == "qwen2"
    assert config.vocab_size % 64 == 0 and len(tokenizer) <= config.vocab_size < len(tokenizer) + 64
    assert config.tie_word_embeddings and config.max_position_embeddings >= 512
    assert config.num_attention_heads % config.num_key_value_heads == 0
    pad, im_end = tokenizer.pad_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert config.pad_token_id == pad and config.bos_token_id == pad
    model = Qwen2ForCausalLM(config)
    assert set(model.generation_config.eos_token_id) == {im_end, pad}
    assert set(embedded.tiny_generation_config(tokenizer).eos_token_id) == {im_end, pad}
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied
    # hand count: embeddings V*H; per layer q,o H*H (+q bias H), k,v H*D_kv (+bias), MLP 3*H*F, 2 norms H
    h, f, layers, v = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size
    d_kv = config.num_key_value_heads * (h // config.num_attention_heads)
    per_layer = 2 * h * h + h + 2 * (h * d_kv + d_kv) + 3 * h * f + 2 * h
    assert sum(p.numel() for p in model.parameters()) == v * h + layers * per_layer + h


def test_build_model_is_deterministic_by_seed(tokenizer):
    import torch

    a, b, c = (embedded.build_model(tokenizer, seed=s) for s in (0, 0, 1))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))


def _tiny_texts(tokenizer, n=64):
    rng = __import__("random").Random(0)
    render = embedded.chat_template_fn(tokenizer)
    return [synthetic.pretrain_text(p, rng, render) for p in synthetic.generate_problems(n, "easy", seed=5)]


def test_pretrain_base_saves_hf_layout_that_round_trips(tmp_path, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    losses = []
    out = embedded.pretrain_base(
        tmp_path / "base", steps=12, seed=3, tokenizer=tokenizer, texts=_tiny_texts(tokenizer), batch_size=8,
        log=lambda m: losses.append(m["loss"]),
    )
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3  # it learns

    model = AutoModelForCausalLM.from_pretrained(out)
    again = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert set(model.generation_config.eos_token_id) == {tokenizer.pad_token_id, tokenizer.eos_token_id}
    loaded_tok = AutoTokenizer.from_pretrained(out)
    assert loaded_tok.get_vocab() == tokenizer.get_vocab()
    ids = loaded_tok("Start with 3. Add 4.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)
    # save again and reload: identical tensors
    model.save_pretrained(tmp_path / "resaved")
    resaved = AutoModelForCausalLM.from_pretrained(tmp_path / "resaved")
    for (name, a), (_, b) in zip(model.state_dict().items(), resaved.state_dict().items()):
        assert torch.equal(a, b), name


def test_pretrain_base_is_deterministic_by_seed(tmp_path, tokenizer):
    from safetensors.torch import load_file

    texts = _tiny_texts(tokenizer, 32)
    runs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        out = embedded.pretrain_base(tmp_path / name, steps=3, seed=seed, tokenizer=tokenizer, texts=texts, batch_size=8)
        runs[name] = load_file(out / "model.safetensors")
    assert runs["a"].keys() == runs["b"].keys()
    assert all((runs["a"][k] == runs["b"][k]).all() for k in runs["a"])
    assert any(not (runs["a"][k] == runs["c"][k]).all() for k in runs["a"])


def test_pretrain_base_rejects_zero_steps(tmp_path, tokenizer):
    with pytest.raises(UserError, match="steps must be >= 1"):
        embedded.pretrain_base(tmp_path / "x", steps=0, tokenizer=tokenizer, texts=["a"])


# --------------------------------------------------------------------------------------------
# data sets in the cache


def test_held_out_sets_have_the_documented_sizes_and_formats(cache):
    val = _read_jsonl(embedded.resolve("embedded:sft-val"))
    test = _read_jsonl(embedded.resolve("embedded:rl-test"))
    assert len(val) == 199 and len(test) == 500
    lo, hi = synthetic.DIFFICULTY_STEPS["uniform"]
    for row in val:
        user, assistant = row["messages"]
        assert set(user) == {"role", "content", "info"} and assistant["info"] is None
        assert user["info"]["source"] == "npu-retu-synthetic"
        assert synthetic.answer_of(assistant["content"]) == user["info"]["reference_answer"]
        assert lo <= user["info"]["difficulty"] <= hi
    for row in test:
        assert set(row) == {"data_source", "prompt", "reward_model", "extra_info"}
        truth = json.loads(row["reward_model"]["ground_truth"])
        assert isinstance(truth, list) and len(truth) == 1 and truth[0] in "0123456789"
        assert lo <= row["extra_info"]["steps"] <= hi
    val_keys = _keys_of_texts(r["messages"][0]["content"] for r in val)
    test_keys = _keys_of_texts(r["prompt"][0]["content"] for r in test)
    assert len(val_keys) == 199 and len(test_keys) == 500 and not val_keys & test_keys
    assert val_keys | test_keys == set(embedded.held_out_keys())


def test_training_sets_exclude_every_held_out_problem(cache):
    held_out = set(embedded.held_out_keys())
    sft = _read_jsonl(embedded.resolve("embedded:sft-easy-1k"))
    rl = _read_jsonl(embedded.resolve("embedded:rl-train"))
    pretrain = embedded.read_pretrain_texts(embedded.resolve("embedded:pretrain-text"))
    problem_docs = [t for t in pretrain if "\\boxed{" in t]
    drill_docs = [t for t in pretrain if "\\boxed{" not in t and "In short:" in t]  # problems read back
    practice_docs = [t for t in pretrain if "\\boxed{" not in t and "In short:" not in t]
    assert 0.3 < len(drill_docs) / len(problem_docs) < 0.7 and 0.3 < len(practice_docs) / len(problem_docs) < 0.7
    assert len(sft) == 1000 and len(rl) == embedded.RL_TRAIN_SIZE and len(problem_docs) == TEST_PRETRAIN_DOCS
    assert all(r["messages"][0]["info"]["difficulty"] <= synthetic.DIFFICULTY_STEPS["easy"][1] for r in sft)
    # the problem statement: the user turn of a chat document, else the first line of a plain one
    problem_texts = [t.split("<|im_start|>user\n")[1].split("<|im_end|>")[0] if "<|im_start|>" in t else t.split("\n")[0] for t in problem_docs]
    drill_texts = [t.split("\n")[0] for t in drill_docs]
    assert all(t.count("\n") == 2 and t.split("\n")[1].startswith("In short: start ") for t in drill_docs)
    for texts in ([r["messages"][0]["content"] for r in sft], [r["prompt"][0]["content"] for r in rl], problem_texts, drill_texts):
        keys = _keys_of_texts(texts)
        assert len(keys) == len(texts)  # distinct
        assert not keys & held_out
    chat = sum("<|im_start|>" in t for t in problem_docs) / len(problem_docs)
    assert 0.2 < chat < 0.4
    assert all("<think>" not in t for t in pretrain)  # no worked solutions before SFT
    # practice documents are one-step facts with correct arithmetic
    for doc in practice_docs:
        for line in doc.strip().split("\n"):
            m = re.search(r"(\d) ([+×-]) (\d) = (-?\d+), keep (\d)\.$", line)
            assert m is not None, line
            v, sym, a, raw, kept = m.groups()
            exact = {"+": int(v) + int(a), "-": int(v) - int(a), "×": int(v) * int(a)}[sym]
            assert (int(raw), int(kept)) == (exact, exact % 10), line


def test_sft_names_are_canonical_and_smaller_sets_are_prefixes(cache):
    assert embedded.resolve("embedded:sft-hard-2000") == embedded.resolve("embedded:sft-hard-2k")
    assert embedded.resolve("embedded:sft-hard-2k").name == "sft-hard-2k.jsonl"
    small = embedded.resolve("embedded:sft-hard-300").read_text(encoding="utf-8").splitlines()
    large = embedded.resolve("embedded:sft-hard-2k").read_text(encoding="utf-8").splitlines()
    assert large[:300] == small


def test_data_files_are_byte_identical_across_caches(cache, tmp_path, monkeypatch):
    first = embedded.resolve("embedded:sft-uniform-500").read_bytes()
    monkeypatch.setenv("NPU_RETU_CACHE", str(tmp_path))
    assert embedded.resolve("embedded:sft-uniform-500").read_bytes() == first
    assert embedded.resolve("embedded:sft-uniform-500").parent == tmp_path / f"embedded-v{embedded.EMBEDDED_VERSION}"


def test_unknown_names_and_sizes_are_user_errors(cache):
    with pytest.raises(UserError, match=r"unknown embedded name 'embedded:sft-medium-1k'.*embedded:base"):
        embedded.resolve("embedded:sft-medium-1k")
    with pytest.raises(UserError, match="size '0k' is not valid"):
        embedded.resolve("embedded:sft-easy-0k")
    assert embedded.parse_size("100k") == 100_000 and embedded.parse_size("250") == 250
    assert embedded.is_embedded("embedded:base") and not embedded.is_embedded("/models/base")


def test_base_model_resolves_to_a_loadable_model(cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = embedded.resolve("embedded:base")
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.vocab_size >= len(tok)
    assert (path / "generation_config.json").is_file()
    assert embedded.resolve("embedded:base") == path  # reused, not rebuilt


def test_base_steps_override_is_cached_apart(cache, monkeypatch):
    monkeypatch.setenv("NPU_RETU_BASE_STEPS", "7")
    assert embedded._artifact("base")[0] == "base-7steps"
    monkeypatch.setenv("NPU_RETU_BASE_STEPS", str(embedded.PRETRAIN_STEPS))
    assert embedded._artifact("base")[0] == "base"
    monkeypatch.setenv("NPU_RETU_BASE_STEPS", "x")
    with pytest.raises(UserError, match="NPU_RETU_BASE_STEPS"):
        embedded._artifact("base")


def test_textbook_solutions_work_the_chain_in_their_own_words():
    import random

    rng = random.Random(3)
    for problem in synthetic.generate_problems(50, "uniform", 11):
        text = synthetic.textbook_solution(problem, rng)
        assert text.startswith("Solution. ") and text.endswith(f"So the answer is {problem.answer}.")
        assert "<think>" not in text and "In short" not in text and "\n" not in text  # not the SFT trajectory's form
        steps = re.findall(r"Step (\d+), (add|subtract|multiply by) (\d): (-?\d+) (.) (\d) = (-?\d+), keep (\d)\.", text)
        assert [int(s[0]) for s in steps] == list(range(1, problem.steps + 1))
        value = problem.start
        for (_, _, operand, shown, _, _, raw, kept), op in zip(steps, problem.ops):  # the arithmetic is the problem's
            assert int(shown) == value and int(operand) == op[1]
            assert (int(raw), int(kept)) == synthetic.apply_op(value, op)
            value = int(kept)


_STARTS = {0: "Start with ", 1: "Begin at ", 2: "Take the number ", 3: "A counter shows "}


def _wording(text: str) -> int:  # the problem is the document's text or its chat user turn
    body = text.split("<|im_start|>user\n", 1)[-1]
    return next(w for w, start in _STARTS.items() if body.startswith(start))


def _problem_docs(docs: list[dict]) -> list[str]:
    return [d["text"] for d in docs if "What" in d["text"] and ("Answer" in d["text"] or "<|im_start|>" in d["text"])]


def _worked_share(docs: list[dict]) -> float:
    problems = _problem_docs(docs)
    return sum("Solution. " in t for t in problems) / len(problems)


def test_worked_pretraining_text_and_base_are_named_variants_beside_the_default(cache):
    bare = _read_jsonl(embedded.resolve("embedded:v4/pretrain-text"))
    worked = _read_jsonl(embedded.resolve("embedded:pretrain-text-worked-50"))
    assert len(worked) == len(bare) and not any("Solution. " in d["text"] for d in bare)
    assert 0.4 < _worked_share(worked) < 0.6  # half the problems, drawn by their own seed
    assert embedded._artifact("base-worked-50")[0] == "base-worked-50"  # this module's recipe is its full one
    with pytest.raises(UserError, match="the worked share is a percentage in 1..100, got 0"):
        embedded.resolve("embedded:base-worked-0")


def test_a_worked_variant_can_cover_only_some_wordings(cache):
    docs = _read_jsonl(embedded.resolve("embedded:pretrain-text-worked-100-wordings-2"))
    problems = _problem_docs(docs)
    by_wording = {w: [("Solution. " in t) for t in problems if _wording(t) == w] for w in _STARTS}
    assert all(len(v) > 50 for v in by_wording.values())
    assert all(by_wording[0]) and all(by_wording[1])  # P = 100 within the first two wordings
    assert not any(by_wording[2]) and not any(by_wording[3])  # bare answers in the others
    assert embedded._artifact("base-worked-100-wordings-2")[0] == "base-worked-100-wordings-2"
    with pytest.raises(UserError, match=r"the worked wordings are a count in 1..3 \(of the task's 4\), got 4"):
        embedded.resolve("embedded:base-worked-100-wordings-4")


def test_a_reworded_variant_keeps_its_worked_share_within_the_first_wordings(cache):
    bare = _problem_docs(_read_jsonl(embedded.resolve("embedded:v4/pretrain-text")))
    docs = _problem_docs(_read_jsonl(embedded.resolve("embedded:pretrain-text-worked-90-reworded-1")))
    worked = [t for t in docs if "Solution. " in t]
    assert len(docs) == len(bare) and 0.85 < len(worked) / len(docs) < 0.95  # P = 90 of all problems
    assert {_wording(t) for t in worked} == {0}  # every worked problem rewritten into wording 0
    assert {_wording(t) for t in docs if "Solution. " not in t} == {0, 1, 2, 3}  # bare ones keep theirs
    # the same problems in the same order: only the worked ones' wording changed
    changed = [(a, b) for a, b in zip(bare, docs) if _wording(a) != _wording(b)]
    assert changed and all("Solution. " in b for a, b in changed)
    assert embedded._artifact("base-worked-90-reworded-1-seed-1")[0] == "base-worked-90-reworded-1-seed-1"


def test_the_default_pretraining_text_is_its_versions_worked_share(cache):
    current = _read_jsonl(embedded.resolve("embedded:pretrain-text"))
    share = embedded.RECIPES[embedded.EMBEDDED_VERSION].worked_percent / 100
    assert abs(_worked_share(current) - share) < 0.06  # the test-sized 400 problems: s.e. of a share <= 2.5 %


def test_calibration_bases_build_at_one_thread_and_the_default_at_its_versions_recipe(cache, monkeypatch):
    import torch

    seen = []
    monkeypatch.setattr(
        embedded, "pretrain_base", lambda out, seed, steps, **kw: seen.append((torch.get_num_threads(), seed, steps))
    )
    monkeypatch.setattr(embedded, "read_pretrain_texts", lambda path: ["x"])
    monkeypatch.setattr(embedded, "resolve", lambda name: Path(name))
    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", lambda *a, **k: None)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        embedded._artifact("base-worked-90")[1](cache / "out")
        name, build = embedded._artifact("base-worked-100-wordings-1-seed-3")
        build(cache / "out")
        embedded._artifact("base", 4)[1](cache / "out")
        short, build_short = embedded._artifact("base-worked-100-steps-1000-seed-2")  # $NPU_RETU_BASE_STEPS=3 wins
        build_short(cache / "out")
        monkeypatch.delenv("NPU_RETU_BASE_STEPS")
        unforced, build_unforced = embedded._artifact("base-worked-100-steps-1000-seed-2")
        build_unforced(cache / "out")
        assert embedded.CALIBRATION_THREADS == 1 and embedded.RECIPES[4].threads is None
        # v4 keeps torch's count, model seed 0 and PRETRAIN_STEPS (3 in this module)
        assert seen == [(1, 0, 3), (1, 3, 3), (2, 0, 3), (1, 2, 3), (1, 2, 1000)]
        assert name == "base-worked-100-wordings-1-seed-3"
        assert (short, unforced) == ("base-worked-100-steps-1000-seed-2-3steps", "base-worked-100-steps-1000-seed-2")
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(before)
    for text in ("pretrain-text-worked-90-seed-1", "pretrain-text-worked-90-steps-1000"):
        with pytest.raises(UserError, match=r"-seed-<S>\) name a base, not its pretraining text"):
            embedded._artifact(text)
    with pytest.raises(UserError, match="the pretraining steps are a count >= 1, got 0"):
        embedded._artifact("base-worked-90-steps-0")


def test_a_version_is_loadable_by_name_and_an_unknown_one_is_a_clear_error(cache):
    # the current version under its own name is the same cache entry as the bare name
    bare = embedded.resolve("embedded:pretrain-text")
    assert embedded.resolve(f"embedded:v{embedded.EMBEDDED_VERSION}/pretrain-text") == bare
    assert bare.parent == embedded.cache_root(embedded.EMBEDDED_VERSION)
    assert embedded.split_version("v4/sft-uniform-2k") == (4, "sft-uniform-2k")
    assert embedded.split_version("sft-uniform-2k") == (embedded.EMBEDDED_VERSION, "sft-uniform-2k")
    with pytest.raises(UserError, match="no embedded default v3; the versions are v4"):
        embedded.resolve("embedded:v3/base")


# --------------------------------------------------------------------------------------------
# the resolver's atomicity


def test_a_leftover_tmp_folder_is_ignored_and_rebuilt(cache):
    root = embedded.cache_root()
    root.mkdir(parents=True, exist_ok=True)
    leftover = root / ".tmp-sft-easy-77.jsonl-deadbeef"
    leftover.mkdir()
    (leftover / "sft-easy-77.jsonl").write_text("half a row")
    path = embedded.resolve("embedded:sft-easy-77")
    assert path == root / "sft-easy-77.jsonl"
    rows = _read_jsonl(path)
    assert len(rows) == 77
    assert leftover.exists()  # not ours to delete: a build may still be writing it


def test_a_failed_build_leaves_nothing_behind(cache, monkeypatch):
    def broken(name, out):
        out.write_text("partial")
        raise RuntimeError("killed")

    monkeypatch.setattr(embedded, "_build_sft", broken)
    with pytest.raises(RuntimeError, match="killed"):
        embedded.resolve("embedded:sft-easy-55")
    root = embedded.cache_root()
    assert not (root / "sft-easy-55.jsonl").exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-sft-easy-55")]


def test_threads_resolving_at_once_build_once_and_agree(cache, monkeypatch):
    real = embedded._build_sft
    builds = []

    def slow_build(name, out):
        builds.append(name)
        time.sleep(0.3)  # long enough that every thread arrives during the build
        real(name, out)

    monkeypatch.setattr(embedded, "_build_sft", slow_build)
    results, errors = [], []

    def worker():
        try:
            path = embedded.resolve("embedded:sft-uniform-123")
            results.append((path, path.read_bytes()))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert builds == ["sft-uniform-123"]
    assert len({p for p, _ in results}) == 1 and len({b for _, b in results}) == 1
    assert len(results[0][1].decode().splitlines()) == 123


def test_processes_resolving_at_once_get_the_same_complete_file(cache):
    code = (
        "import sys; from npu_retu.models import embedded; "
        "p = embedded.resolve('embedded:sft-hard-3k'); print(p); print(len(p.read_text().splitlines()))"
    )
    env = dict(os.environ, NPU_RETU_CACHE=str(cache))
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1] == [str(embedded.cache_root() / "sft-hard-3k.jsonl"), "3000"]
    assert not [p for p in embedded.cache_root().iterdir() if p.name.startswith(".tmp-sft-hard-3k")]


# --------------------------------------------------------------------------------------------
# the CLI's embedded action


def test_cli_data_embedded_prints_paths(cache, capsys):
    from npu_retu.cli import main

    assert main(["data", "embedded", "--name", "sft-val", "--name", "embedded:rl-test", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == {
        "embedded:sft-val": str(embedded.cache_root() / "sft-val.jsonl"),
        "embedded:rl-test": str(embedded.cache_root() / "rl-test.jsonl"),
    }
    assert main(["data", "embedded", "--name", "sft-val"]) == 0
    out = capsys.readouterr().out
    assert f"v{embedded.EMBEDDED_VERSION}" in out and "sft-val.jsonl" in out
    assert main(["data", "embedded", "--name", "nope"]) == 2
    assert "unknown embedded name" in capsys.readouterr().err
