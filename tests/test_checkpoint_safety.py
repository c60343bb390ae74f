"""Checkpoint safety (issue 14): ``--resume`` never runs code from a checkpoint, and a full disk
during a save is one clear line with nothing half-written left behind.

A crafted ``trainer_state.pt`` (or DeepSpeed shard) here tries to create a marker file when it is
unpickled; the tests assert the load is refused with a one-line UserError naming the file and that
the marker never appears. The state the SFT and RL trainers really write is loaded the safe way and
compared piece by piece with a full unpickle of the same file.
"""

from __future__ import annotations

import errno
import json
import math
import os
import pathlib
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from npu_retu.config import load_config
from npu_retu.distributed.process_group import RankInfo
from npu_retu.errors import EnvironmentFault, UserError
from npu_retu.trainer import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[1]
REFUSED = "holds objects other than tensors and plain values"


class RunsShell:
    """Unpickling this runs ``touch MARKER`` through os.system (pickled as GLOBAL posix.system)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class TouchesPath:
    """Unpickling this calls pathlib.Path.touch(MARKER)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def fake_checkpoint(tmp_path: Path) -> Path:
    folder = tmp_path / "run" / "checkpoints" / "step-000004"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


# ------------------------------------------------------------------------------------------------
# trainer_state.pt: weights only


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 5")  # torch's note on the protocol-5 payload
@pytest.mark.parametrize(
    "kind, refused_global",
    [
        ("torch.save, payload inside a real-looking state", "posix.system"),
        ("raw pickle, protocol 2", "posix.system"),
        ("raw pickle, protocol 5", "pathlib.Path.touch"),
    ],
)
def test_trainer_state_that_would_run_code_is_refused_and_nothing_runs(tmp_path, kind, refused_global):
    def write_payload(path: Path, marker: Path) -> None:
        if kind.startswith("torch.save"):
            torch.save({"step": 4, "flops": 1.0, "rng": RunsShell(marker), "engine": {"w": torch.ones(2)}}, path)
        elif kind.endswith("protocol 2"):
            path.write_bytes(pickle.dumps(RunsShell(marker), protocol=2))
        else:
            path.write_bytes(pickle.dumps({"step": 4, "rng": TouchesPath(marker)}, protocol=5))

    # the payload is real: a full unpickle runs it (torch then rejects a raw pickle's magic number)
    probe_marker = tmp_path / "probe-ran"
    write_payload(tmp_path / "probe.pt", probe_marker)
    try:
        torch.load(tmp_path / "probe.pt", weights_only=False)
    except RuntimeError as e:
        assert str(e) == "Invalid magic number; corrupt file?"
    assert probe_marker.exists()

    folder = fake_checkpoint(tmp_path)
    marker = tmp_path / "code-ran"
    path = folder / ckpt.TRAINER_STATE
    write_payload(path, marker)
    with pytest.raises(UserError) as raised:
        ckpt.load_trainer_state(folder)
    message = str(raised.value)
    assert "\n" not in message
    assert message == (
        f"{path} {REFUSED} ({refused_global}) and was not loaded: it was not written by npu-retu, or it was tampered with"
    )
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_corrupt_or_truncated_trainer_state_is_a_one_line_user_error(tmp_path, damage):
    folder = fake_checkpoint(tmp_path)
    path = folder / ckpt.TRAINER_STATE
    torch.save({"step": 4, "engine": {"exp_avg": torch.arange(4096.0)}}, path)
    whole = path.read_bytes()
    path.write_bytes({"truncated": whole[: len(whole) // 2], "empty": b"", "garbage": b"\x44\x00\xff" * 100}[damage])
    with pytest.raises(UserError) as raised:
        ckpt.load_trainer_state(folder)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{path} is corrupt, truncated or not a file npu-retu wrote, and was not loaded (")
    # the loader's own reason, its first sentence (where a truncated zip fails depends on the cut)
    reason = message.split("was not loaded (", 1)[1]
    if damage == "truncated":
        assert reason.startswith(("RuntimeError: PytorchStreamReader failed", "OSError: [Errno 22] Invalid argument"))
    else:
        assert reason == {"empty": "EOFError)", "garbage": "UnpicklingError: Unsupported operand 68)"}[damage]


def assert_same(a, b, where="state"):
    """Deep equality of two loaded states: containers, tensors (values and dtype), numbers."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys differ"
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), f"{where}: tensors differ"
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def load_recording_weights_only(monkeypatch, folder: Path) -> tuple[dict, list]:
    """load_trainer_state(folder), recording the weights_only argument of every torch.load call."""
    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    state = ckpt.load_trainer_state(folder)
    monkeypatch.setattr(torch, "load", real_load)
    return state, calls


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    from npu_retu.trainer.sft import train_sft

    tmp = tmp_path_factory.mktemp("sft")
    cfg = load_config(None, [
        "run.name=sft", f"run.output_dir={tmp}", "run.seed=3", "run.progress=false", "model.path=embedded:base",
        "data.train_files=[embedded:sft-uniform-500]", "data.val_files=[embedded:sft-val]", "data.max_length=320",
        "sft.global_batch_size=4", "sft.micro_batch_size=2", "sft.max_steps=2", "sft.eval_every=2", "sft.save_every=2",
        "sft.eval_batch_size=64", "monitor.stop_on_decision=false",
    ])
    return cfg, train_sft(cfg, quiet=True)


def test_real_sft_trainer_state_loads_weights_only(sft_run, monkeypatch):
    from npu_retu.device import get_backend

    cfg, result = sft_run
    folder = result.run_dir / "checkpoints" / "step-000002"
    state, calls = load_recording_weights_only(monkeypatch, folder)
    assert calls == [True]
    # every piece the trainer wrote comes back exactly as a full unpickle of our own file gives it
    assert_same(state, torch.load(folder / ckpt.TRAINER_STATE, map_location="cpu", weights_only=False))
    assert list(state) == ["step", "flops", "tokens", "elapsed", "engine", "batcher", "monitor", "rng", "config"]
    train_rows = [r for r in result.metrics if "train/loss" in r]
    assert state["step"] == 2 and state["flops"] == result.flops
    assert state["tokens"] == sum(r["train/tokens"] for r in train_rows)
    assert state["config"] == cfg.to_dict()
    # AdamW: one state per parameter (both groups), two optimizer steps; the schedule stepped twice
    optimizer = state["engine"]["optimizer"]
    assert len(optimizer["state"]) == sum(len(g["params"]) for g in optimizer["param_groups"]) > 0
    assert all(s["step"].item() == 2.0 and s["exp_avg"].dtype == torch.float32 for s in optimizer["state"].values())
    assert optimizer["param_groups"][0]["betas"] == (0.9, 0.95)
    assert state["engine"]["scheduler"]["last_epoch"] == 2
    # 2 steps x 2 micro-batches of 2 (global batch 4) in epoch 0
    assert state["batcher"] == {"epoch": 0, "index": 4}
    val_loss = next(r["val/loss"] for r in result.metrics if "val/loss" in r)
    assert state["monitor"]["history"] == [[2, result.flops, val_loss, True]]
    assert state["rng"]["python"][0] == 3 and state["rng"]["numpy"][0] == "MT19937"
    # the RNG state restores: the next draws repeat
    backend = get_backend()
    backend.set_rng_state(state["rng"])
    first = torch.rand(4)
    backend.set_rng_state(state["rng"])
    assert torch.equal(torch.rand(4), first)


class DigitReward:
    """1.0 when the response contains a digit of the ground truth (as in test_rl_trainer.py)."""

    def score(self, items):
        return [1.0 if any(g in text for g in gts) else 0.0 for text, gts in items]

    def stats(self):
        return {}

    def close(self):
        pass


@pytest.fixture(scope="module")
def rl_run(tmp_path_factory):
    from npu_retu.trainer.rl import train_rl

    tmp = tmp_path_factory.mktemp("rl")
    cfg = load_config(None, [
        "run.name=rl", f"run.output_dir={tmp}", "run.seed=5", "run.progress=false", "model.path=embedded:base",
        "rl.train_files=[embedded:rl-easy-200]", "rl.train_batch_prompts=4", "rl.gen_batch_prompts=4",
        "rl.mini_batch_prompts=2", "rl.micro_batch_size=4", "rl.algo.n=4", "rl.algo.max_draws=2",
        "rl.max_response_length=16", "rl.max_steps=2", "rl.eval_every=1", "rl.eval_at_start=false", "rl.save_every=2",
        "rl.optim.lr=1e-3", "eval.files=[embedded:rl-test]", "eval.max_problems=4", "eval.n=2",
    ])
    return cfg, train_rl(cfg, quiet=True, reward=DigitReward())


def test_real_rl_trainer_state_loads_weights_only(rl_run, monkeypatch):
    cfg, result = rl_run
    folder = result.run_dir / "checkpoints" / "step-000002"
    state, calls = load_recording_weights_only(monkeypatch, folder)
    assert calls == [True]
    assert_same(state, torch.load(folder / ckpt.TRAINER_STATE, map_location="cpu", weights_only=False))
    assert list(state) == ["step", "flops", "elapsed", "evals", "engine", "sampler", "rng", "config"]
    assert state["step"] == 2 and state["flops"] == result.flops
    assert state["config"] == cfg.to_dict()
    # the evaluation records (step 1 and 2) are in the state as the run reported them
    assert [e["step"] for e in state["evals"]] == [1, 2]
    assert json.loads(json.dumps(state["evals"])) == json.loads((result.run_dir / "evals.json").read_text())
    assert state["sampler"]["epoch"] == 0 and state["sampler"]["position"] in (8, 12, 16)
    # up to 2 optimizer steps (mini-batches) per RL step; the optimizer and the schedule agree
    optimizer_steps = state["engine"]["scheduler"]["last_epoch"]
    assert 1 <= optimizer_steps <= 4
    assert {s["step"].item() for s in state["engine"]["optimizer"]["state"].values()} == {float(optimizer_steps)}


# ------------------------------------------------------------------------------------------------
# a full disk during a save


def write_hf_files(folder: Path) -> None:
    (folder / "config.json").write_text('{"model_type": "test"}')
    (folder / "model.safetensors").write_bytes(b"weights" * 100)


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def disk_error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def safetensors_disk_full() -> Exception:
    """What safetensors raises for a full disk: its own error, the errno only in the message."""
    from safetensors import SafetensorError

    return SafetensorError('Error while serializing: I/O error: No space left on device (os error 28) at path "x/.tmp1"')


@pytest.mark.parametrize(
    "error, reason",
    [
        (disk_error(errno.ENOSPC), "No space left on device"),
        (disk_error(errno.EDQUOT), "Disk quota exceeded"),
        (disk_error(errno.EROFS), "Read-only file system"),
        (disk_error(errno.EACCES), "Permission denied"),
        ("safetensors", "No space left on device"),
    ],
    ids=["ENOSPC", "EDQUOT", "EROFS", "EACCES", "safetensors-ENOSPC"],
)
def test_disk_full_writing_the_model_is_one_line_and_leaves_nothing_behind(tmp_path, error, reason):
    run_dir = tmp_path / "run"
    earlier = ckpt.save_checkpoint(run_dir, 2, write_hf_files, {"step": 2, "w": torch.ones(3)})
    before = files_of(earlier)
    error = safetensors_disk_full() if error == "safetensors" else error

    def write_model_then_fail(folder: Path) -> None:
        (folder / "config.json").write_text("{}")
        raise error

    with pytest.raises(EnvironmentFault) as raised:
        ckpt.save_checkpoint(run_dir, 4, write_model_then_fail, {"step": 4})
    assert str(raised.value) == (
        f"could not write checkpoint {run_dir / 'checkpoints' / 'step-000004'}: {reason}; "
        "the partial checkpoint was removed, the previous checkpoints are intact"
    )
    assert raised.value.__cause__ is error
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-000002"]
    assert files_of(earlier) == before
    assert ckpt.list_checkpoints(run_dir) == [(2, earlier)]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux), whose writes fail with ENOSPC")
def test_a_real_enospc_while_writing_trainer_state_is_an_environment_fault(tmp_path):
    """The trainer state goes to a file whose writes the kernel fails with ENOSPC (/dev/full):
    torch.save on a bare path would turn that into a RuntimeError without the errno."""
    run_dir = tmp_path / "run"
    earlier = ckpt.save_checkpoint(run_dir, 2, write_hf_files, {"step": 2})

    def write_model_onto_a_full_disk(folder: Path) -> None:
        write_hf_files(folder)
        (folder / ckpt.TRAINER_STATE).symlink_to("/dev/full")

    with pytest.raises(EnvironmentFault) as raised:
        ckpt.save_checkpoint(run_dir, 4, write_model_onto_a_full_disk, {"step": 4, "w": torch.zeros(1 << 16)})
    assert str(raised.value).startswith(f"could not write checkpoint {run_dir / 'checkpoints' / 'step-000004'}: No space left on device;")
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-000002"]
    assert ckpt.list_checkpoints(run_dir) == [(2, earlier)]


def test_another_failure_is_re_raised_as_it_is_and_the_partial_checkpoint_removed(tmp_path):
    run_dir = tmp_path / "run"
    ckpt.save_checkpoint(run_dir, 2, write_hf_files, {"step": 2})

    def broken_model_writer(folder: Path) -> None:
        write_hf_files(folder)
        raise ValueError("tokenizer has no vocabulary")

    with pytest.raises(ValueError, match="^tokenizer has no vocabulary$"):
        ckpt.save_checkpoint(run_dir, 4, broken_model_writer, {"step": 4})
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-000002"]


def test_a_failed_save_of_an_existing_step_keeps_the_old_checkpoint(tmp_path):
    """Re-saving a step after a resume replaces it only once the new one is complete."""
    run_dir = tmp_path / "run"
    old = ckpt.save_checkpoint(run_dir, 4, write_hf_files, {"step": 4, "w": torch.arange(3.0)})
    before = files_of(old)

    def full_disk(folder: Path) -> None:
        raise disk_error(errno.ENOSPC)

    with pytest.raises(EnvironmentFault):
        ckpt.save_checkpoint(run_dir, 4, write_hf_files, {"step": 4}, write_engine_files=full_disk)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-000004"]
    assert files_of(old) == before
    assert torch.equal(ckpt.load_trainer_state(old)["w"], torch.arange(3.0))
    # and a successful re-save does replace it, leaving no .tmp-* behind
    ckpt.save_checkpoint(run_dir, 4, write_hf_files, {"step": 4, "w": torch.ones(3)})
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-000004"]
    assert torch.equal(ckpt.load_trainer_state(old)["w"], torch.ones(3))


def test_with_ranks_a_failing_rank_1_leaves_the_folder_to_rank_0_and_the_barriers_are_unchanged(tmp_path, monkeypatch):
    from npu_retu.distributed import process_group

    barriers = []
    monkeypatch.setattr(process_group, "barrier", lambda: barriers.append(1))
    run_dir = tmp_path / "run"
    root = run_dir / "checkpoints"
    shared_tmp = root / ".tmp-step-000004-dist"

    # rank 0 first (the fake barrier does not wait): it creates the shared folder and writes its shard
    def rank0_shard(folder: Path) -> None:
        (folder / "rank0.pt").write_bytes(b"shard0")

    rank0 = RankInfo(rank=0, world_size=2)
    rank1 = RankInfo(rank=1, world_size=2)
    final = ckpt.save_checkpoint(run_dir, 4, write_hf_files, {"step": 4}, write_engine_files=rank0_shard, ranks=rank0)
    assert len(barriers) == 3 and (final / "rank0.pt").read_bytes() == b"shard0"
    barriers.clear()
    # a healthy rank 1 passes the same three barriers and writes nothing of its own but its shard
    root.joinpath(".tmp-step-000006-dist").mkdir()
    ckpt.save_checkpoint(run_dir, 6, lambda d: None, {}, write_engine_files=lambda d: (d / "rank1.pt").write_bytes(b"1"), ranks=rank1)
    assert len(barriers) == 3 and (root / ".tmp-step-000006-dist" / "rank1.pt").read_bytes() == b"1"
    barriers.clear()

    # rank 1's disk is full: it says so on one line, after the first barrier only, and does not
    # delete the folder rank 0 owns (rank 0's files in it stay until rank 0 or the next save clears them)
    shared_tmp.mkdir()
    (shared_tmp / "rank0.pt").write_bytes(b"shard0")

    def full_disk(folder: Path) -> None:
        raise disk_error(errno.ENOSPC)

    with pytest.raises(EnvironmentFault) as raised:
        ckpt.save_checkpoint(run_dir, 4, write_hf_files, {}, write_engine_files=full_disk, ranks=rank1)
    assert str(raised.value) == (
        f"could not write checkpoint {root / 'step-000004'} (rank 1): No space left on device; its partial files in "
        ".tmp-step-000004-dist are never resumed and the next save removes them, the previous checkpoints are intact"
    )
    assert len(barriers) == 1
    assert (shared_tmp / "rank0.pt").read_bytes() == b"shard0"

    # rank 0's disk is full in its shard: it removes the shared folder and says so
    barriers.clear()
    with pytest.raises(EnvironmentFault, match=r"\(rank 0\): No space left on device; the partial checkpoint was removed"):
        ckpt.save_checkpoint(run_dir, 8, write_hf_files, {}, write_engine_files=full_disk, ranks=rank0)
    assert len(barriers) == 1
    assert not any(p.name.startswith(".tmp-") for p in root.iterdir())


# ------------------------------------------------------------------------------------------------
# DeepSpeed's own files: its loader unpickles with weights_only=False; ours must not

DEEPSPEED_SCRIPT = textwrap.dedent(
    """
    import json, os, shutil, sys
    from pathlib import Path
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from npu_retu.algos import NextTokenNLL
    from npu_retu.config import EngineConfig, OptimConfig
    from npu_retu.device import get_backend
    from npu_retu.engine.deepspeed_engine import DeepSpeedEngine
    from npu_retu.errors import UserError

    work = Path(sys.argv[1])
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32))
    engine = DeepSpeedEngine(model, OptimConfig(lr=1e-2, warmup_steps=0, schedule="linear"),
                             EngineConfig(name="deepspeed", zero_stage=2), total_steps=10, backend=get_backend(),
                             world_size=1, micro_batch_size=2, grad_accum_steps=1)

    def train_step():
        ids = torch.randint(0, 64, (2, 8))
        loss_sum, _ = NextTokenNLL()(engine.module, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
        engine.backward(loss_sum / 14, last=True)
        return engine.step()

    def snapshot():
        opt = engine.optimizer
        return {"fp32": [t.detach().clone() for t in opt.single_partition_of_fp32_groups],
                "adam": [{k: v.clone() for k, v in s.items()} for s in opt.optimizer.state.values()],
                "lr": opt.param_groups[0]["lr"], "steps": engine.ds.global_steps}

    def same(a, b):
        return (all(torch.equal(x, y) for x, y in zip(a["fp32"], b["fp32"]))
                and all(torch.equal(x[k], y[k]) for x, y in zip(a["adam"], b["adam"]) for k in x)
                and a["lr"] == b["lr"] and a["steps"] == b["steps"])

    train_step()
    saved = work / "ckpt"
    engine.save_engine_files(saved)
    at_save = snapshot()
    train_step()
    moved = not same(snapshot(), at_save)

    calls = []
    real_load = torch.load
    def recording_load(f, *args, **kwargs):
        calls.append([Path(f).name, kwargs.get("weights_only")])
        return real_load(f, *args, **kwargs)
    torch.load = recording_load
    engine.load_engine_files(saved)
    torch.load = real_load
    result = {"moved": moved, "restored": same(snapshot(), at_save), "loads": calls,
              "files": sorted(p.name for p in (saved / "deepspeed" / "state").iterdir())}

    class RunsShell:
        def __init__(self, marker):
            self.marker = marker
        def __reduce__(self):
            return (os.system, ("touch " + str(self.marker),))

    for target in ["zero_pp_rank_0_mp_rank_00_optim_states.pt", "mp_rank_00_model_states.pt"]:
        crafted = work / ("crafted-" + target)
        shutil.copytree(saved, crafted)
        marker = work / ("ran-" + target)
        torch.save({"optimizer_state_dict": RunsShell(marker), "module": {}}, crafted / "deepspeed" / "state" / target)
        try:
            engine.load_engine_files(crafted)
            outcome = ["loaded", ""]
        except UserError as e:
            outcome = ["UserError", str(e)]
        except Exception as e:
            outcome = [type(e).__name__, str(e)]
        result[target] = {"outcome": outcome, "path": str(crafted / "deepspeed" / "state" / target),
                          "code_ran": marker.exists()}
    print("RESULT " + json.dumps(result))
    """
)


@pytest.fixture(scope="module")
def deepspeed_checks(tmp_path_factory):
    pytest.importorskip("deepspeed", reason="needs DeepSpeed: pip install 'npu-retu[distributed]'")
    work = tmp_path_factory.mktemp("deepspeed")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("DS_ACCELERATOR", None)
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run([sys.executable, "-c", DEEPSPEED_SCRIPT, str(work)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-4000:] + proc.stderr[-4000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_deepspeed_zero2_resume_loads_every_file_weights_only_and_restores_the_state(deepspeed_checks):
    assert deepspeed_checks["files"] == ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"]
    assert deepspeed_checks["moved"], "the step after the save did not change the state: nothing was tested"
    assert deepspeed_checks["restored"]
    # DeepSpeed reads the model states file twice (its mp world size, then the states), the shard once
    loads = deepspeed_checks["loads"]
    assert {name for name, _ in loads} == {"mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"}
    assert [weights_only for _, weights_only in loads] == [True] * len(loads)


@pytest.mark.parametrize("target", ["zero_pp_rank_0_mp_rank_00_optim_states.pt", "mp_rank_00_model_states.pt"])
def test_deepspeed_shard_that_would_run_code_is_refused_and_nothing_runs(deepspeed_checks, target):
    check = deepspeed_checks[target]
    assert not check["code_ran"]
    assert check["outcome"] == [
        "UserError",
        f"{check['path']} {REFUSED} (posix.system) and was not loaded: it was not written by npu-retu, or it was tampered with",
    ]
