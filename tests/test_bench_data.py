"""`npu-retu bench data` on a tiny set: the figures it saves are for the set it wrote, every run gives
the same ids, and the warm run reads what the cold run cached (no timing asserted: benchmarks are
commands, not timed tests)."""

from __future__ import annotations

import json
import subprocess
import sys

from transformers import AutoTokenizer

from npu_retu.bench.data import write_synthetic_sft
from npu_retu.data import BadRowCounter, load_sft
from npu_retu.data.tokenize import tokenize_sft
from npu_retu.models.embedded import resolve


def test_bench_data_saves_figures_for_the_set_it_wrote(tmp_path):
    out = tmp_path / "data.json"
    done = subprocess.run(
        [sys.executable, "-m", "npu_retu", "bench", "data", "--rows", "150", "--shards", "4", "--workers", "1", "--rounds", "1",
         "--max-length", "200", "--tmp-dir", str(tmp_path), "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(out.read_text())
    # the same set, tokenized here in one process: the bench's counts are its counts
    data = write_synthetic_sft(tmp_path / "again", 150, 4)
    assert len(list(data.iterdir())) == 4
    tokenizer = AutoTokenizer.from_pretrained(str(resolve("embedded:tokenizer")))
    counter = BadRowCounter()
    examples = [t for e in load_sft(data, counter=counter) if (t := tokenize_sft(e, tokenizer, 200, too_long="skip")) is not None]
    assert 0 < len(examples) < 150  # some rows are longer than 200 tokens
    assert (figures["rows"], figures["examples"], figures["tokens"]) == (150, len(examples), sum(len(e) for e in examples))
    assert figures["same_ids_in_every_run"] is True
    assert set(figures["runs"]) == {"1-cold", "1-warm"}
    # the cold run starts from an empty cache and writes an entry per shard, which the warm run finds
    assert [r["cache_entries_before"] for r in figures["runs"]["1-cold"]["rounds"] + figures["runs"]["1-warm"]["rounds"]] == [0, 4]
    assert all(r["rows"] == 150 and r["examples"] == len(examples) for run in figures["runs"].values() for r in run["rounds"])
    assert "saved: " in done.stdout and [p.name for p in tmp_path.iterdir() if p.name.startswith("npu-retu-bench-data-")] == []
