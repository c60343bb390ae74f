"""Tokenization in worker processes and the tokenized-data cache give exactly what one process gives.

The reference is what the SFT trainer did before (``load_sft``, then ``tokenize_sft`` on each
example, rows longer than ``max_length`` counted as skips) and what the RL trainer did (``tokenize_prompt``
and ``tokenize_expert`` one example after another): same ids, masks and sources in the same order,
the same rows counted and skipped in the same order with the same messages, the same first error.
Worker processes: 2 at most, on small sets (starting one costs seconds).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from npu_retu.config import Config, ConfigError, load_config
from npu_retu.data import BadRowCounter, ChatTemplateError, DataError, load_rl, load_sft
from npu_retu.data import prepare
from npu_retu.data.prepare import resolve_num_workers, tokenize_rl_examples, tokenize_sft_files
from npu_retu.data.token_cache import TokenCache
from npu_retu.data.tokenize import tokenize_expert, tokenize_prompt, tokenize_sft
from npu_retu.errors import UserError
from npu_retu.models.embedded import resolve

FIXTURES = Path(__file__).parent / "fixtures" / "data"
REPO = Path(__file__).resolve().parents[1]


def reference_sft(paths, tokenizer, *, max_length, too_long="error", skip_bad_rows=False, counter=None):
    """The SFT trainer's tokenization before npu_retu.data.prepare, line for line."""
    examples = load_sft(paths, skip_bad_rows=skip_bad_rows, counter=counter)
    mode = "skip" if skip_bad_rows and too_long == "error" else too_long
    out = []
    for example in examples:
        tokenized = tokenize_sft(example, tokenizer, max_length, too_long=mode)
        if tokenized is None:
            counter.skip(example.source, "longer than data.max_length", field="messages")
            continue
        out.append(tokenized)
    return out


def counted(counter: BadRowCounter) -> tuple:
    return dict(counter.rows), counter.skipped_rows, counter.summary()


def entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.fixture(scope="module")
def embedded_tokenizer():
    return AutoTokenizer.from_pretrained(str(resolve("embedded:tokenizer")))


@pytest.fixture
def chatml():
    return AutoTokenizer.from_pretrained(FIXTURES / "chatml_tokenizer")


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    return tmp_path / "data"


def row(question: str, answer: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]})


LONG = " ".join(f"word{i}" for i in range(120))  # far over 64 tokens of the chatml fixture


def bad_shards(data_dir: Path) -> list[str]:
    """Two shards with every kind of problem: malformed JSON, a missing field, rows that are too long,
    a row that is not an object."""
    (data_dir / "a.jsonl").write_text("\n".join([
        row("q1", "a1"), '{"messages": [', row("q2", LONG), json.dumps({"prompt": "no response"}), row("q3", "a3"),
        row("q4", "a4"), row("q5", LONG), row("q6", "a6"),
    ]) + "\n", encoding="utf-8")
    (data_dir / "b.jsonl").write_text("\n".join([row("q7", "a7"), row("q8", LONG), "[1, 2]", row("q9", "a9")]) + "\n", encoding="utf-8")
    return ["data/a.jsonl", "data/b.jsonl"]


# --------------------------------------------------------------------------------------------
# the embedded sets, with 2 worker processes


def test_embedded_sft_set_in_two_workers_then_from_the_cache_equals_one_process(embedded_tokenizer, tmp_path, monkeypatch):
    file = str(resolve("embedded:sft-uniform-200"))
    ref_counter = BadRowCounter()
    reference = reference_sft([file], embedded_tokenizer, max_length=256, too_long="skip", counter=ref_counter)
    assert 0 < ref_counter.skipped < 100 and len(reference) == 200 - ref_counter.skipped  # some rows are too long

    cache = tmp_path / "cache"
    monkeypatch.setattr(prepare, "CHUNK_EXAMPLES", 16)  # 13 chunks over 2 workers, taken back in order
    counter = BadRowCounter()
    cold = tokenize_sft_files([file], embedded_tokenizer, max_length=256, too_long="skip", counter=counter, num_workers=2, cache_dir=cache)
    assert cold == reference
    assert counted(counter) == counted(ref_counter)
    [name] = entries(cache)  # one entry, no temp file left
    assert name.startswith("sft-") and name.endswith(".arrow")

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenized again despite the cache")

    monkeypatch.setattr(prepare, "_sft_chunk", no_tokenizing)
    counter = BadRowCounter()
    warm = tokenize_sft_files([file], embedded_tokenizer, max_length=256, too_long="skip", counter=counter, num_workers=2, cache_dir=cache)
    assert warm == reference
    assert counted(counter) == counted(ref_counter)


def test_rl_set_in_two_workers_equals_one_process(embedded_tokenizer, monkeypatch):
    from npu_retu.trainer.rl import load_rl_prompts

    examples = load_rl(str(resolve("embedded:mix-uniform-20")))
    reference = [(tokenize_prompt(e.prompt, embedded_tokenizer), [tokenize_expert(e.prompt, t, embedded_tokenizer) for t in e.experts[:1]])
                 for e in examples]
    assert all(len(experts) == 1 for _, experts in reference)
    monkeypatch.setattr(prepare, "CHUNK_EXAMPLES", 3)
    assert list(tokenize_rl_examples(examples, embedded_tokenizer, experts=1, num_workers=2)) == reference
    assert list(tokenize_rl_examples(examples, embedded_tokenizer, experts=0, num_workers=0)) == [(p, []) for p, _ in reference]

    # the trainer's route, with expert trajectories too long for some prompts skipped and counted
    cfg = load_config(None, ["rl.algorithm=luffy", "rl.train_files=[embedded:mix-uniform-20]"])
    limit = sorted(len(experts[0]) for _, experts in reference)[10]
    cfg.rl.max_response_length = limit
    results = []
    for workers in (0, 2):
        counter = BadRowCounter()
        out = load_rl_prompts(cfg.rl, embedded_tokenizer, True, counter, num_workers=workers)
        results.append((out, counted(counter)))
    assert results[0] == results[1]
    (prompts, kept, experts), (_, skipped, _) = results[0]
    expected = [(p, e) for p, e in reference if len(e[0]) <= limit]
    assert list(zip(prompts, experts)) == expected and len(skipped) == 20 - len(expected) > 0


# --------------------------------------------------------------------------------------------
# bad rows, too-long rows and errors, in this process (chunks of 2 examples)


@pytest.mark.parametrize("too_long", ["error", "skip", "truncate"])
def test_bad_and_long_rows_across_shards_count_like_one_process_cold_and_warm(chatml, data_dir, tmp_path, monkeypatch, too_long):
    monkeypatch.setattr(prepare, "CHUNK_EXAMPLES", 2)
    files = bad_shards(data_dir)
    ref_counter = BadRowCounter()
    reference = reference_sft(files, chatml, max_length=64, too_long=too_long, skip_bad_rows=True, counter=ref_counter)
    kept = {"error": 6, "skip": 6, "truncate": 9}[too_long]
    assert len(reference) == kept
    for run in ("cold", "warm"):
        counter = BadRowCounter()
        out = tokenize_sft_files(files, chatml, max_length=64, too_long=too_long, skip_bad_rows=True, counter=counter, num_workers=0,
                                 cache_dir=tmp_path / "cache")
        assert out == reference, run
        assert counted(counter) == counted(ref_counter), run
    assert len(entries(tmp_path / "cache")) == 2  # one per shard


def test_first_error_is_the_one_process_error(chatml, data_dir, tmp_path):
    (data_dir / "long.jsonl").write_text(row("q1", "a1") + "\n" + row("q2", LONG) + "\n", encoding="utf-8")
    (data_dir / "broken.jsonl").write_text(row("q3", "a3") + "\n" + '{"messages": [' + "\n", encoding="utf-8")
    cache = tmp_path / "cache"

    def both(files, **kw):
        with pytest.raises((DataError, ChatTemplateError)) as expected:
            reference_sft(files, chatml, max_length=64, counter=BadRowCounter(), **kw)
        with pytest.raises(type(expected.value)) as caught:
            tokenize_sft_files(files, chatml, max_length=64, counter=BadRowCounter(), num_workers=0, cache_dir=cache, **kw)
        assert str(caught.value) == str(expected.value)
        return str(caught.value)

    # every file is read before any is tokenized: the bad row of the second file comes first
    assert both(["data/long.jsonl", "data/broken.jsonl"]) == "data/broken.jsonl: row 2: malformed JSON: Expecting value (column 15)"
    assert both(["data/long.jsonl"]).startswith("data/long.jsonl: row 2, field 'messages': ")  # too long
    assert entries(cache) == []  # a file that failed is not cached

    # cached in a run that skipped, the same errors come from the cache in a run that does not
    tokenize_sft_files(["data/long.jsonl"], chatml, max_length=64, skip_bad_rows=True, counter=BadRowCounter(), num_workers=0, cache_dir=cache)
    assert len(entries(cache)) == 1
    assert both(["data/long.jsonl", "data/broken.jsonl"]).startswith("data/broken.jsonl: row 2: malformed JSON")
    assert both(["data/long.jsonl"]).startswith("data/long.jsonl: row 2, field 'messages': ")

    chatml.chat_template = None
    assert both(["data/broken.jsonl"], skip_bad_rows=True).startswith("data/broken.jsonl:1: the tokenizer has no chat template")


def test_too_long_error_message_is_exact(chatml, data_dir):
    (data_dir / "long.jsonl").write_text(row("q2", LONG) + "\n", encoding="utf-8")
    length = len(tokenize_sft(load_sft("data/long.jsonl")[0], chatml, 10**9))
    with pytest.raises(DataError) as caught:
        tokenize_sft_files(["data/long.jsonl"], chatml, max_length=64, num_workers=0, cache=False)
    assert str(caught.value) == (
        f"data/long.jsonl: row 1, field 'messages': {length} tokens after the chat template, longer than max_length 64 "
        "(set data.too_long to 'skip' or 'truncate', or raise data.max_length)"
    )


# --------------------------------------------------------------------------------------------
# the cache: keys, a kill mid-write, unreadable entries


def test_cache_key_follows_the_file_the_limit_and_the_template(chatml, data_dir, tmp_path):
    cache = tmp_path / "cache"
    file = data_dir / "train.jsonl"
    file.write_text(row("q1", "a1") + "\n", encoding="utf-8")

    def run(max_length=64):
        out = tokenize_sft_files(["data/train.jsonl"], chatml, max_length=max_length, num_workers=0, cache_dir=cache)
        assert out == reference_sft(["data/train.jsonl"], chatml, max_length=max_length, counter=BadRowCounter())
        return out

    assert len(run()) == 1 and len(entries(cache)) == 1
    assert len(run()) == 1 and len(entries(cache)) == 1  # the same key: reused
    with file.open("a", encoding="utf-8") as handle:
        handle.write(row("q2", "a2") + "\n")
    assert len(run()) == 2 and len(entries(cache)) == 2  # the file changed: a new key
    run(max_length=128)
    assert len(entries(cache)) == 3
    chatml.chat_template = chatml.chat_template.replace("You are a helpful assistant.", "Be brief.")
    assert "Be brief." in chatml.decode(run()[0].input_ids)
    assert len(entries(cache)) == 4


def test_a_kill_mid_write_leaves_no_entry_and_the_next_run_recovers(chatml, data_dir, tmp_path):
    files = bad_shards(data_dir)
    cache = tmp_path / "cache"
    # a run killed (SIGKILL) after writing its first entry's bytes, before the rename
    script = (
        "import os, signal, npu_retu.data.token_cache as tc\n"
        "tc.os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
        "from transformers import AutoTokenizer\n"
        "from npu_retu.data.prepare import tokenize_sft_files\n"
        f"tok = AutoTokenizer.from_pretrained({str(FIXTURES / 'chatml_tokenizer')!r})\n"
        f"tokenize_sft_files({files!r}, tok, max_length=64, skip_bad_rows=True, num_workers=0, cache_dir={str(cache)!r})\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=data_dir.parent, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == -9, done.stderr
    [leftover] = entries(cache)
    assert leftover.startswith(".tmp-sft-") and (cache / leftover).stat().st_size > 0

    ref_counter = BadRowCounter()
    reference = reference_sft(files, chatml, max_length=64, skip_bad_rows=True, counter=ref_counter)
    counter = BadRowCounter()
    assert tokenize_sft_files(files, chatml, max_length=64, skip_bad_rows=True, counter=counter, num_workers=0, cache_dir=cache) == reference
    assert counted(counter) == counted(ref_counter)
    assert len([n for n in entries(cache) if not n.startswith(".tmp-")]) == 2


def test_an_unreadable_entry_is_tokenized_again_and_rewritten(chatml, data_dir, tmp_path, caplog):
    cache = tmp_path / "cache"
    (data_dir / "train.jsonl").write_text(row("q1", "a1") + "\n" + row("q2", "a2") + "\n", encoding="utf-8")
    reference = reference_sft(["data/train.jsonl"], chatml, max_length=64, counter=BadRowCounter())
    assert tokenize_sft_files(["data/train.jsonl"], chatml, max_length=64, num_workers=0, cache_dir=cache) == reference
    [name] = entries(cache)
    (cache / name).write_bytes((cache / name).read_bytes()[:100])  # a damaged disk block
    assert tokenize_sft_files(["data/train.jsonl"], chatml, max_length=64, num_workers=0, cache_dir=cache) == reference
    assert "cannot read" in caplog.text and "tokenizing again" in caplog.text
    key = name.removesuffix(".arrow")
    entry = TokenCache.open(cache).load(key)
    assert entry is not None and entry.rows == 2 and len(entry) == 2


# --------------------------------------------------------------------------------------------
# the trainer's route and the config keys


def test_trainer_reads_globs_and_splits_through_the_cache(chatml, data_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from npu_retu.trainer.sft import load_sft_data

    for i in range(3):
        rows = [{"prompt": f"q{i}{j}", "response": f"a{i}{j}"} for j in range(4)]
        pq.write_table(pa.Table.from_pylist(rows), data_dir / f"train-{i}.parquet")
    cfg = Config()
    cfg.data.train_files = ["data/train-*.parquet"]
    cfg.data.val_files = [f"{FIXTURES / 'hf_sft_dict'}:test"]
    cfg.data.max_length = 128
    cfg.data.num_workers = 0
    cfg.data.cache_dir = str(tmp_path / "cache")
    train, val = load_sft_data(cfg, chatml, BadRowCounter())
    assert train == reference_sft("data/train-*.parquet", chatml, max_length=128, counter=BadRowCounter())
    assert [t.source for t in train[3:5]] == ["data/train-0.parquet:3", "data/train-1.parquet:0"]
    assert val == reference_sft(f"{FIXTURES / 'hf_sft_dict'}:test", chatml, max_length=128, counter=BadRowCounter())
    assert len(val) == 2 and len(entries(tmp_path / "cache")) == 4  # 3 shards + 1 split shard
    # a path that is neither there nor a glob keeps the trainer's message
    cfg.data.train_files = ["data/missing.jsonl"]
    with pytest.raises(UserError) as caught:
        load_sft_data(cfg, chatml, BadRowCounter())
    assert str(caught.value) == "file or folder not found: data/missing.jsonl"


def test_num_workers_rule_and_config_keys(tmp_path):
    from npu_retu.trainer.run_folder import check_resume_config, record_config

    cpus = prepare.available_cpus()
    assert resolve_num_workers(None, prepare.AUTO_MIN_BYTES - 1) == 0
    assert resolve_num_workers(None, prepare.AUTO_MIN_BYTES) == (min(8, cpus) if cpus >= 2 else 0)
    assert [resolve_num_workers(n, 10**12) for n in (0, 1, 2, 5)] == [0, 0, 2, 5]
    cfg = load_config(None, ["data.num_workers=3", "data.cache=false", "data.cache_dir=/tmp/tok"])
    assert (cfg.data.num_workers, cfg.data.cache, cfg.data.cache_dir) == (3, False, "/tmp/tok")
    with pytest.raises(ConfigError) as caught:
        load_config(None, ["data.num_workers=-2"])
    assert str(caught.value) == (
        "config key 'data.num_workers': -2 is not allowed; must be >= 0 (0 or 1: in the training process), or null for the automatic choice"
    )
    # how tokenization runs may change on --resume: it does not change what is trained
    record_config(Config(), tmp_path)
    resumed = Config()
    resumed.data.num_workers, resumed.data.cache = 4, False
    assert check_resume_config(resumed, tmp_path, say=lambda line: None) == {"data.num_workers": (None, 4), "data.cache": (True, False)}
