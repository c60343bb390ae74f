"""``npu-retu bench rollout``: generated tokens per second of each installed rollout engine.

Every engine gets the same prompts (the config's RL prompts, chat template applied) and the same
sampling settings (``--n`` samples each, the config's temperature and top-p, ``--max-new-tokens``).
Each engine lives in its own worker process, started once (vLLM in a process changes torch's thread
settings, so the engines must not share one); the rounds are interleaved — transformers, vllm,
transformers, vllm, ... — so that a noisy machine slows both alike. Reports the median and the spread
(min–max) of tokens/s per engine and the ratio of the medians, and saves them as JSON.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

RESULT_PREFIX = "BENCH-ROLLOUT "


def run_rollout_bench(args: Any) -> dict:
    """Start one worker per engine, run ``args.rounds`` interleaved rounds, print and save the figures."""
    from npu_retu.errors import UserError
    from npu_retu.rollout import ENGINE_CHOICES, vllm_installed

    engines = [e for e in args.engines.split(",") if e]
    for engine in engines:
        if engine not in ENGINE_CHOICES or engine == "auto":
            raise UserError(f"--engines takes transformers and/or vllm, got {engine!r}")
    if "vllm" in engines and not vllm_installed():
        print("bench rollout: vLLM is not installed here; measuring the transformers engine only")
        engines = [e for e in engines if e != "vllm"]
    spec = {"config": args.config, "overrides": list(args.overrides), "prompts": args.prompts, "n": args.n,
            "max_new_tokens": args.max_new_tokens, "seed": args.seed}
    workers = {engine: _start_worker(engine, spec) for engine in engines}
    try:
        ready = {engine: _read_result(proc) for engine, proc in workers.items()}
        rounds: dict[str, list[dict]] = {engine: [] for engine in engines}
        for number in range(args.warmup + args.rounds):
            for engine, proc in workers.items():
                proc.stdin.write("go\n")
                proc.stdin.flush()
                result = _read_result(proc)
                if number >= args.warmup:
                    rounds[engine].append(result)
    finally:
        for proc in workers.values():
            if proc.stdin:
                proc.stdin.close()
            proc.wait(timeout=120)

    import torch

    from npu_retu.device import get_backend

    backend = get_backend()
    figures: dict[str, Any] = {**spec, "rounds": args.rounds, "warmup_rounds": args.warmup, "engines": {},
                               "device": backend.name, "chip": backend.chip_name(), "torch": torch.__version__,
                               "python": platform.python_version(), "date": datetime.datetime.now().isoformat(timespec="seconds")}
    for engine in engines:
        speeds = [r["tokens"] / r["seconds"] for r in rounds[engine]]
        figures["engines"][engine] = {
            "tokens_per_s_median": statistics.median(speeds), "tokens_per_s_min": min(speeds), "tokens_per_s_max": max(speeds),
            "seconds_median": statistics.median(r["seconds"] for r in rounds[engine]),
            "response_tokens_mean": statistics.mean(r["tokens"] for r in rounds[engine]),
            "start_s": ready[engine]["start_s"], "description": ready[engine]["description"],
        }
    print(f"rollout: {args.prompts} prompts x {args.n} samples, up to {args.max_new_tokens} new tokens, "
          f"{args.rounds} interleaved rounds after {args.warmup} warm-up, device {backend.name}")
    for engine, f in figures["engines"].items():
        print(f"  {engine:<12} {f['tokens_per_s_median']:8.0f} tokens/s (min {f['tokens_per_s_min']:.0f}, max "
              f"{f['tokens_per_s_max']:.0f}); {f['seconds_median']:.1f} s a round; started in {f['start_s']:.0f} s")
    if {"vllm", "transformers"} <= set(figures["engines"]):
        ratio = figures["engines"]["vllm"]["tokens_per_s_median"] / figures["engines"]["transformers"]["tokens_per_s_median"]
        figures["vllm_over_transformers"] = ratio
        print(f"  vllm / transformers: {ratio:.2f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2), encoding="utf-8")
    print(f"saved: {out}")
    return figures


def _start_worker(engine: str, spec: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "npu_retu.bench.rollout", engine, json.dumps(spec)], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "TQDM_DISABLE": "1"},
    )


def _read_result(proc: subprocess.Popen) -> dict:
    """The worker's next result line (its other output, e.g. vLLM's log, is skipped)."""
    for line in proc.stdout:
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    raise RuntimeError(f"bench rollout: a worker ended early (exit status {proc.wait()}); run it alone to see why")


def _worker(engine: str, spec: dict) -> None:
    """Build ``engine`` for the config, then answer each ``go`` line on stdin with one timed generation."""
    from npu_retu.config import load_config
    from npu_retu.configs import resolve_config_path
    from npu_retu.data.schemas import load_rl
    from npu_retu.data.tokenize import tokenize_prompt
    from npu_retu.device import get_backend
    from npu_retu.models.modeling import load_model, load_tokenizer, resolve_path
    from npu_retu.rollout import SamplingParams, build_rollout

    cfg = load_config(resolve_config_path(spec["config"]), list(spec["overrides"]) + [f"rl.rollout.engine={engine}"])
    path = str(resolve_path(cfg.model.path))
    tokenizer = load_tokenizer(path)
    backend = get_backend()
    model = load_model(path, cfg.model.dtype).to(backend.device())
    rows = load_rl([resolve_path(p) for p in cfg.rl.train_files])[: spec["prompts"]]
    prompts = [tokenize_prompt(row.prompt, tokenizer) for row in rows]
    import time

    started = time.perf_counter()
    rollout, description = build_rollout(
        cfg.rl.rollout, model=model, tokenizer=tokenizer, model_path=path, dtype=cfg.model.dtype,
        max_model_len=max(len(p) for p in prompts) + spec["max_new_tokens"], seed=cfg.run.seed, backend_name=backend.name,
    )
    _emit({"start_s": time.perf_counter() - started, "description": description})
    params = SamplingParams(n=spec["n"], temperature=cfg.rl.rollout.temperature, top_p=cfg.rl.rollout.top_p,
                            max_new_tokens=spec["max_new_tokens"], seed=spec["seed"])
    for line in sys.stdin:
        if line.strip() != "go":
            continue
        trajectories = rollout.generate(prompts, params)
        stats = rollout.last_stats
        _emit({"tokens": sum(len(t.response_ids) for t in trajectories), "seconds": stats.seconds})


def _emit(payload: dict) -> None:
    print(RESULT_PREFIX + json.dumps(payload), flush=True)


if __name__ == "__main__":
    _worker(sys.argv[1], json.loads(sys.argv[2]))
