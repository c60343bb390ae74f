"""``npu-retu bench data``: rows per second and peak memory of reading + tokenizing an SFT set.

The bench writes a synthetic set (``--rows`` AM-DeepSeek-shaped rows of the embedded task, in
``--shards`` Parquet shards) into a temporary folder, then reads and tokenizes the whole folder with
:func:`npu_retu.data.prepare.tokenize_sft_files` for each worker count (1 = in the measuring
process), with a cold cache (an empty cache folder) and then a warm one (the entries the cold run
wrote). Every measurement runs in a fresh process, so its peak RSS is its own: the measuring
process's, and the largest worker's. Rounds are interleaved — 1 cold, 1 warm, 2 cold, 2 warm, ... —
so that a noisy machine slows all alike. Reports the median and the spread (min–max) of rows/s and
checks that every run gave the same token ids (a SHA-256 over all of them); saves the figures as JSON.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULT_PREFIX = "BENCH-DATA "


def run_data_bench(args: Any) -> dict:
    """Write the synthetic set, run ``args.rounds`` interleaved rounds, print and save the figures."""
    from npu_retu.errors import UserError

    try:
        workers = sorted({int(w) for w in str(args.workers).split(",") if w.strip()})
    except ValueError:
        raise UserError(f"--workers takes worker counts separated by commas, e.g. 1,2; got {args.workers!r}") from None
    if not workers or min(workers) < 1:
        raise UserError(f"--workers takes counts >= 1 (1 = in the measuring process), got {args.workers!r}")
    for name in ("rows", "shards", "rounds", "max_length"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    tokenizer = _tokenizer_path(args.tokenizer)
    root = Path(tempfile.mkdtemp(prefix="npu-retu-bench-data-", dir=args.tmp_dir))
    try:
        started = time.perf_counter()
        data = write_synthetic_sft(root / "data", args.rows, args.shards, seed=args.seed)
        write_s = time.perf_counter() - started
        size_mb = sum(f.stat().st_size for f in data.iterdir()) / 2**20
        print(f"bench data: {args.rows:,} synthetic SFT rows in {args.shards} Parquet shards ({size_mb:.1f} MiB, "
              f"written in {write_s:.1f} s); {args.rounds} interleaved round(s) of workers {', '.join(map(str, workers))}, "
              "cold and warm cache")
        spec = {"data": str(data), "tokenizer": tokenizer, "max_length": args.max_length}
        runs: dict[str, list[dict]] = {}
        for number in range(args.rounds):
            for count in workers:
                cache = root / f"cache-{number}-{count}"
                for state in ("cold", "warm"):
                    result = _measure({**spec, "workers": count, "cache_dir": str(cache)})
                    runs.setdefault(f"{count}-{state}", []).append(result)
                    print(f"  round {number + 1}: {count} worker(s), {state:<4} cache: {result['rows'] / result['seconds']:9,.0f} rows/s "
                          f"({result['seconds']:.1f} s), peak RSS {result['peak_rss_mb']:.0f} MiB"
                          + (f", largest worker {result['worker_peak_rss_mb']:.0f} MiB" if result["worker_peak_rss_mb"] else ""))
                shutil.rmtree(cache, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    digests = {r["ids_sha256"] for rs in runs.values() for r in rs}
    figures: dict[str, Any] = {
        "rows": args.rows, "shards": args.shards, "max_length": args.max_length, "tokenizer": args.tokenizer, "rounds": args.rounds,
        "workers": workers, "seed": args.seed, "data_mib": size_mb, "same_ids_in_every_run": len(digests) == 1,
        "examples": runs[next(iter(runs))][0]["examples"], "tokens": runs[next(iter(runs))][0]["tokens"],
        "cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "runs": {},
    }
    print(f"bench data: {figures['examples']:,} examples, {figures['tokens']:,} tokens; median (min-max) over {args.rounds} round(s)")
    print(f"  {'workers':>7}  {'cache':<5}  {'rows/s':>28}  {'peak RSS MiB':>12}  {'worker MiB':>10}")
    for name, results in runs.items():
        count, state = name.split("-")
        speeds = [r["rows"] / r["seconds"] for r in results]
        entry = {
            "workers": int(count), "cache": state, "rows_per_s_median": statistics.median(speeds), "rows_per_s_min": min(speeds),
            "rows_per_s_max": max(speeds), "seconds_median": statistics.median(r["seconds"] for r in results),
            "peak_rss_mb_median": statistics.median(r["peak_rss_mb"] for r in results),
            "rss_before_mb_median": statistics.median(r["rss_before_mb"] for r in results),
            "worker_peak_rss_mb_median": statistics.median(r["worker_peak_rss_mb"] for r in results), "rounds": results,
        }
        figures["runs"][name] = entry
        spread = f"{entry['rows_per_s_median']:,.0f} ({entry['rows_per_s_min']:,.0f}-{entry['rows_per_s_max']:,.0f})"
        print(f"  {count:>7}  {state:<5}  {spread:>28}  {entry['peak_rss_mb_median']:>12.0f}  {entry['worker_peak_rss_mb_median']:>10.0f}")
    if not figures["same_ids_in_every_run"]:
        print("  WARNING: the runs gave different token ids; this is a bug, please report it")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2), encoding="utf-8")
    print(f"saved: {out}")
    return figures


def write_synthetic_sft(folder: Path, rows: int, shards: int, *, seed: int = 0) -> Path:
    """``rows`` AM-DeepSeek-shaped rows of the embedded task (1-6 steps) in ``shards`` Parquet files."""
    from npu_retu.data import synthetic

    problems = synthetic.generate_problems(rows, "uniform", seed)
    rng = random.Random(f"bench-data:{seed}")
    folder.mkdir(parents=True)
    per_shard = -(-rows // shards)
    for index in range(shards):
        part = problems[index * per_shard : (index + 1) * per_shard]
        if part:
            synthetic.write_parquet(folder / f"train-{index:05d}-of-{shards:05d}.parquet", [synthetic.sft_row(p, rng) for p in part])
    return folder


def _tokenizer_path(name: str) -> str:
    from npu_retu.models import embedded

    return str(embedded.resolve(name)) if embedded.is_embedded(name) else name


def _measure(spec: dict) -> dict:
    """One measurement in a fresh process (its peak RSS is its own)."""
    done = subprocess.run([sys.executable, "-m", "npu_retu.bench.data", json.dumps(spec)], capture_output=True, text=True,
                          env={**os.environ, "TQDM_DISABLE": "1"})
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
    raise RuntimeError(f"bench data: a measurement ended without a result (exit status {done.returncode}): {tail}")


def _rss_mb(who: int) -> float:
    import resource

    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


def _worker(spec: dict) -> None:
    import resource

    from transformers import AutoTokenizer

    from npu_retu.data.errors import BadRowCounter
    from npu_retu.data.prepare import tokenize_sft_files

    tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer"])
    cache = Path(spec["cache_dir"])
    entries = len([p for p in cache.iterdir() if not p.name.startswith(".")]) if cache.is_dir() else 0
    before = _rss_mb(resource.RUSAGE_SELF)
    counter = BadRowCounter()
    started = time.perf_counter()
    examples = tokenize_sft_files([spec["data"]], tokenizer, max_length=spec["max_length"], too_long="skip", counter=counter,
                                  num_workers=spec["workers"], cache_dir=spec["cache_dir"])
    seconds = time.perf_counter() - started
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps(example.input_ids).encode() + json.dumps(example.loss_mask).encode())
    print(RESULT_PREFIX + json.dumps({
        "seconds": seconds, "rows": sum(counter.rows.values()), "examples": len(examples), "skipped": counter.skipped,
        "tokens": sum(len(e.input_ids) for e in examples), "ids_sha256": digest.hexdigest(), "cache_entries_before": entries, "rss_before_mb": before,
        "peak_rss_mb": _rss_mb(resource.RUSAGE_SELF), "worker_peak_rss_mb": _rss_mb(resource.RUSAGE_CHILDREN),
    }), flush=True)


if __name__ == "__main__":
    _worker(json.loads(sys.argv[1]))
