"""The run folder: only npu-retu's own folders are deleted, one writer at a time, a resumed config is
checked key by key, and bad configs are one-line errors (issue 14, defects 1, 3, 4 and weak spots)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from npu_retu.cli import main
from npu_retu.config import ConfigError, load_config
from npu_retu.errors import UserError
from npu_retu.trainer.run_folder import (
    CHANGES_FILE, LOCK, MARKER, RunFolderBusy, check_resume_config, open_run_folder, record_config,
)

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# defect 1: --overwrite deletes only npu-retu's own run folders


@pytest.mark.parametrize("name", [".", "..", "a/b", "a\\b", ""])
def test_run_name_that_is_not_a_plain_folder_name_is_refused(name):
    with pytest.raises(ConfigError, match="config key 'run.name'"):
        load_config(None, [f"run.name={name}"] if name else ["run.name=''"])


def test_overwrite_with_run_name_dotdot_deletes_nothing(tmp_path, capsys):
    # the reproduction from the issue: it used to remove all of x/
    x = tmp_path / "x"
    (x / "out").mkdir(parents=True)
    (x / "precious.txt").write_text("keep me")
    rc = main(["sft", "--config", "demo_cpu", f"run.output_dir={x / 'out'}", "run.name=..", "model.path=nonexistent", "--overwrite"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "config key 'run.name'" in err and err.count("\n") == 1
    assert (x / "precious.txt").read_text() == "keep me"


def test_overwrite_refuses_a_folder_npu_retu_did_not_make(tmp_path):
    folder = tmp_path / "runs" / "mine"
    folder.mkdir(parents=True)
    (folder / "thesis.tex").write_text("years of work")
    with pytest.raises(UserError, match=f"was not made by npu-retu \\(no {MARKER} file"):
        open_run_folder(str(tmp_path / "runs"), "mine", resume=False, overwrite=True)
    assert (folder / "thesis.tex").read_text() == "years of work"


def test_overwrite_refuses_a_symlink_out_of_output_dir(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / MARKER).write_text("{}")  # even a folder that looks like ours
    (elsewhere / "data.bin").write_text("x")
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "link").symlink_to(elsewhere)
    with pytest.raises(UserError, match="symbolic link"):
        open_run_folder(str(runs), "link", resume=False, overwrite=True)
    assert (elsewhere / "data.bin").is_file()


def test_overwrite_clears_our_own_folder_and_keeps_the_lock(tmp_path):
    with open_run_folder(str(tmp_path), "r", resume=False, overwrite=False) as folder:
        (folder.path / "metrics.jsonl").write_text('{"step": 1}\n')
        (folder.path / "checkpoints").mkdir()
    assert (tmp_path / "r" / MARKER).is_file()
    with open_run_folder(str(tmp_path), "r", resume=False, overwrite=True) as folder:
        assert sorted(p.name for p in folder.path.iterdir()) == sorted([LOCK, MARKER])


def test_existing_run_needs_resume_or_overwrite(tmp_path):
    with open_run_folder(str(tmp_path), "r", resume=False, overwrite=False) as folder:
        (folder.path / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(UserError, match="already exists; pass --resume to continue it or --overwrite"):
        open_run_folder(str(tmp_path), "r", resume=False, overwrite=False)
    assert (tmp_path / "r" / "metrics.jsonl").read_text() == '{"step": 1}\n'


def test_a_failed_start_does_not_block_a_plain_rerun(tmp_path, capsys):
    # bad data: the run stops before its first step, leaving config.yaml behind
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": 3}\n')
    args = ["sft", "--config", "demo_cpu", f"run.output_dir={tmp_path}", "run.name=r", f"data.train_files=[{bad}]"]
    assert main(args) == 2
    assert "bad.jsonl: row 1" in capsys.readouterr().err
    assert (tmp_path / "r" / "config.yaml").is_file()
    # the rerun is not told that the folder exists (it fails on the same data again, as it should)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "already exists" not in err and "bad.jsonl: row 1" in err


# --------------------------------------------------------------------------------------------
# defect 3: one writer per run folder


def test_second_writer_is_refused_with_the_holder(tmp_path):
    with open_run_folder(str(tmp_path), "r", resume=False, overwrite=False):
        for resume, overwrite in [(False, False), (True, False), (False, True)]:
            with pytest.raises(RunFolderBusy) as info:
                open_run_folder(str(tmp_path), "r", resume=resume, overwrite=overwrite)
            message = str(info.value)
            assert f"pid {os.getpid()} on {socket.gethostname()}" in message
            assert "\n" not in message
        assert (tmp_path / "r" / MARKER).is_file()  # the refused overwrite deleted nothing
    with open_run_folder(str(tmp_path), "r", resume=True, overwrite=False):  # released: free again
        pass


def test_lock_file_of_a_dead_process_does_not_block(tmp_path):
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / MARKER).write_text("{}")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (folder / LOCK).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "then"}))
    with open_run_folder(str(tmp_path), "r", resume=True, overwrite=False):
        holder = json.loads((folder / LOCK).read_text())
        assert holder["pid"] == os.getpid()


def _sft_config(tmp_path: Path, lr: float, steps: int = 4) -> Path:
    cfg = tmp_path / f"lr{lr}.yaml"
    cfg.write_text(
        f"""
run: {{name: shared, output_dir: "{tmp_path}", seed: 3, progress: false}}
model: {{path: "embedded:base"}}
data: {{train_files: ["embedded:sft-uniform-1k"], val_files: ["embedded:sft-val"], max_length: 320}}
sft: {{global_batch_size: 4, micro_batch_size: 4, max_steps: {steps}, eval_every: 2, save_every: 2, eval_batch_size: 64,
      optim: {{lr: {lr}, schedule: constant}}}}
monitor: {{stop_on_decision: false}}
"""
    )
    return cfg


def _npu_retu(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "npu_retu", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_two_runs_started_together_exactly_one_runs(tmp_path):
    procs = {lr: _npu_retu("sft", "--config", str(_sft_config(tmp_path, lr))) for lr in (1e-3, 2e-3)}
    outs = {lr: p.communicate(timeout=600)[0] for lr, p in procs.items()}
    codes = {lr: p.returncode for lr, p in procs.items()}
    assert sorted(codes.values()) == [0, 2], outs
    winner = next(lr for lr, rc in codes.items() if rc == 0)
    loser = next(lr for lr, rc in codes.items() if rc == 2)
    assert f"is in use by another npu-retu process (pid {procs[winner].pid} on {socket.gethostname()}" in outs[loser]
    run = tmp_path / "shared"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["sft"]["optim"]["lr"] == winner
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines() if "train/loss" in line]
    assert steps == [1, 2, 3, 4]


def test_a_refusal_that_loses_the_race_by_microseconds_still_names_the_holder(tmp_path):
    # the holder writes its line just after flock; a loser that reads the empty file in between
    # rereads it instead of saying "holder unknown" (seen once in a fresh-clone suite)
    import threading

    from npu_retu.trainer.run_folder import _holder_text

    lock = tmp_path / LOCK
    lock.write_text("")
    line = json.dumps({"pid": 4242, "host": "node-7", "started": "2026-12-07 23:40:00"}) + "\n"
    writer = threading.Timer(0.2, lambda: lock.write_text(line))
    writer.start()
    try:
        assert _holder_text(lock) == "pid 4242 on node-7, since 2026-12-07 23:40:00"
    finally:
        writer.join()
    lock.write_text("")
    started = time.monotonic()
    assert _holder_text(lock, wait_s=0.1) == "holder unknown"
    assert time.monotonic() - started >= 0.1


def test_overwrite_of_a_live_run_is_refused(tmp_path):
    first = _npu_retu("sft", "--config", str(_sft_config(tmp_path, 1e-3, steps=6)))
    lock = tmp_path / "shared" / LOCK
    deadline = time.time() + 300
    while time.time() < deadline and first.poll() is None:
        if lock.is_file() and str(first.pid) in lock.read_text():
            break
        time.sleep(0.05)
    second = _npu_retu("sft", "--config", str(_sft_config(tmp_path, 2e-3, steps=6)), "--overwrite")
    out2 = second.communicate(timeout=300)[0]
    out1 = first.communicate(timeout=600)[0]
    assert second.returncode == 2 and "is in use by another npu-retu process" in out2, out2
    assert first.returncode == 0, out1
    assert yaml.safe_load((tmp_path / "shared" / "config.yaml").read_text())["sft"]["optim"]["lr"] == 1e-3
    assert sorted(p.name for p in (tmp_path / "shared" / "checkpoints").iterdir()) == ["step-000002", "step-000004", "step-000006"]


# --------------------------------------------------------------------------------------------
# defect 4: --resume with a changed config


def test_resume_refuses_a_changed_training_key_and_applies_a_budget_change(tmp_path):
    cfg_file = _sft_config(tmp_path, 3e-3, steps=2)
    first = _npu_retu("sft", "--config", str(cfg_file))
    out = first.communicate(timeout=600)[0]
    assert first.returncode == 0, out
    run = tmp_path / "shared"
    before = (run / "config.yaml").read_text()

    changed = _npu_retu("sft", "--config", str(cfg_file), "--resume", "sft.optim.lr=1e-4")
    out = changed.communicate(timeout=300)[0]
    assert changed.returncode == 2, out
    assert "config key 'sft.optim.lr' differs from the run being resumed" in out and "0.003" in out and "0.0001" in out
    assert (run / "config.yaml").read_text() == before  # never rewritten to what did not run

    longer = _npu_retu("sft", "--config", str(cfg_file), "--resume", "sft.max_steps=4")
    out = longer.communicate(timeout=600)[0]
    assert longer.returncode == 0, out
    assert "resume: sft.max_steps changes from 2 to 4" in out
    assert yaml.safe_load((run / "config.yaml").read_text())["sft"]["max_steps"] == 4
    (entry,) = [json.loads(line) for line in (run / CHANGES_FILE).read_text().splitlines()]
    assert entry["resumed_from"] == "step-000002"
    assert entry["changes"] == {"sft.max_steps": {"old": 2, "new": 4}}
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines() if "train/loss" in line]
    assert steps == [1, 2, 3, 4]


def test_check_resume_config_names_every_fixed_key(tmp_path):
    record_config(load_config(None, ["sft.optim.lr=3e-3", "run.seed=1"]), tmp_path)
    with pytest.raises(UserError) as info:
        check_resume_config(load_config(None, ["sft.optim.lr=1e-4", "run.seed=2"]), tmp_path, say=lambda *a: None)
    # the first differing key in config order is named with both values, the others after it
    assert str(info.value).startswith("config key 'run.seed' differs from the run being resumed") and "1, now: 2" in str(info.value)
    assert "(and 1 more: sft.optim.lr)" in str(info.value)
    said = []
    changes = check_resume_config(load_config(None, ["sft.optim.lr=3e-3", "run.seed=1", "rl.max_steps=7", "cluster.timeout_s=5"]),
                                  tmp_path, say=said.append)
    assert changes == {"rl.max_steps": (100, 7), "cluster.timeout_s": (1800.0, 5.0)}
    assert len(said) == 2


def test_resume_reads_a_run_folder_written_before_sft_optim(tmp_path):
    """A config.yaml from before the move holds SFT's optimizer at the top level ('optim'): its
    values count as sft.optim's, so resuming with the same settings is no change."""
    record_config(load_config(None, ["sft.optim.lr=3e-3", "sft.optim.warmup_steps=4"]), tmp_path)
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    saved["optim"] = saved["sft"].pop("optim")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    assert check_resume_config(load_config(None, ["sft.optim.lr=3e-3", "sft.optim.warmup_steps=4"]), tmp_path,
                               say=lambda *a: None) == {}
    with pytest.raises(UserError, match=r"^config key 'sft.optim.lr' differs from the run being resumed \(.*: 0.003, now: 0.0001\)"):
        check_resume_config(load_config(None, ["sft.optim.lr=1e-4", "sft.optim.warmup_steps=4"]), tmp_path, say=lambda *a: None)


def test_resume_of_a_config_written_before_a_key_existed(tmp_path):
    saved = load_config(None).to_dict()
    del saved["model"]["trust_remote_code"]  # an older npu-retu did not have it
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    assert check_resume_config(load_config(None), tmp_path, say=lambda *a: None) == {}
    with pytest.raises(UserError, match="model.trust_remote_code"):
        check_resume_config(load_config(None, ["model.trust_remote_code=true"]), tmp_path, say=lambda *a: None)


# --------------------------------------------------------------------------------------------
# config weak spots: one-line errors


def _write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "c.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.parametrize("text", ["", "# only a comment\n\n"])
def test_empty_config_is_refused(tmp_path, text):
    with pytest.raises(ConfigError, match="holds no settings"):
        load_config(_write(tmp_path, text))


def test_duplicate_yaml_key_is_refused_with_its_lines(tmp_path):
    path = _write(tmp_path, "run:\n  name: a\n  seed: 1\n  name: b\n")
    with pytest.raises(ConfigError, match=r"key 'name' appears twice in one section \(lines 2 and 4\)"):
        load_config(path)


def test_non_utf8_config_is_one_line(tmp_path):
    path = _write(tmp_path, b"run:\n  name: caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "not UTF-8 text (byte 16" in str(info.value) and "\n" not in str(info.value)


def test_bad_yaml_in_an_override_is_one_line():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["run.name=[1,"])
    assert str(info.value).startswith("override 'run.name=[1,': the value is not valid YAML") and "\n" not in str(info.value)


@pytest.mark.parametrize("value", ["inf", ".inf", "1e300", "nan", "2"])
def test_learning_rate_must_be_finite_and_sane(value):
    with pytest.raises(ConfigError, match="'sft.optim.lr'"):
        load_config(None, [f"sft.optim.lr={value}"])


def test_non_finite_number_is_refused_for_any_key():
    with pytest.raises(ConfigError, match="config key 'cluster.timeout_s': expected a finite number"):
        load_config(None, ["cluster.timeout_s=.inf"])


def test_missing_config_path_says_file_not_found(tmp_path, capsys):
    assert main(["sft", "--config", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert f"config file not found: {tmp_path / 'nope.yaml'}" in err and "shipped config named" not in err
    # a bare file name that is neither here nor shipped (the old message spoke of shipped configs only)
    assert main(["sft", "--config", "my-run.yaml"]) == 2
    err = capsys.readouterr().err
    assert "config file not found: my-run.yaml, and no shipped config has that name; shipped: " in err and "demo_cpu" in err


def test_environment_fault_is_one_line_and_exit_status_1(monkeypatch, capsys):
    """A full disk is the machine's fault, not the user's: exit status 1, one line, no traceback."""
    import npu_retu.cli as cli
    from npu_retu.errors import EnvironmentFault

    class FullDisk:  # a stand-in for the sft command module whose run() meets a full disk
        HELP = "sft"
        add_arguments = staticmethod(cli._load("sft").add_arguments)

        @staticmethod
        def run(args):
            raise EnvironmentFault("could not write checkpoint runs/x/checkpoints/step-000004: No space left on device")

    monkeypatch.setattr(cli, "_load", lambda name: FullDisk)
    assert cli.main(["sft", "--config", "demo_cpu"]) == 1
    assert capsys.readouterr().err == "npu-retu sft: error: could not write checkpoint runs/x/checkpoints/step-000004: No space left on device\n"
