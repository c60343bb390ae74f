import pytest

from npu_retu.config import Config, ConfigError, load_config


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_and_yaml_and_overrides(tmp_path):
    p = write(tmp_path, "run:\n  name: x\nsft:\n  global_batch_size: 64\n  micro_batch_size: 16\n  optim:\n    lr: 1e-5\n")
    cfg = load_config(p, ["sft.max_steps=7", "sft.optim.betas=[0.9, 0.99]", "monitor.pick=mild", "data.train_files=a.jsonl"])
    assert isinstance(cfg, Config)
    assert cfg.run.name == "x"
    assert cfg.sft.global_batch_size == 64 and cfg.sft.max_steps == 7
    assert cfg.sft.optim.lr == 1e-5  # YAML reads "1e-5" as a string; it must still become a float
    assert cfg.sft.optim.betas == [0.9, 0.99]
    assert cfg.monitor.pick == "mild"
    assert cfg.data.train_files == ["a.jsonl"]
    assert cfg.monitor.delta == 0.02 and cfg.monitor.delta2 == 0.1  # the paper's defaults


def test_unknown_key_names_key_and_choices(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "sft:\n  lrr: 1\n"))
    msg = str(e.value)
    assert "sft.lrr" in msg and "global_batch_size" in msg and "micro_batch_size" in msg
    with pytest.raises(ConfigError, match="unknown config key 'trainer'"):
        load_config(None, ["trainer.x=1"])


def test_wrong_type_names_key(tmp_path):
    with pytest.raises(ConfigError, match=r"'sft.max_steps': expected an integer, got 'ten'"):
        load_config(None, ["sft.max_steps=ten"])
    with pytest.raises(ConfigError, match=r"'monitor.stop_on_decision': expected true or false"):
        load_config(None, ["monitor.stop_on_decision=3"])
    with pytest.raises(ConfigError, match=r"'monitor.pick': 'severe' is not allowed; choose one of 'stable', 'mild'"):
        load_config(None, ["monitor.pick=severe"])


def test_impossible_values_name_key():
    with pytest.raises(ConfigError, match=r"'sft.global_batch_size'.*multiple of sft.micro_batch_size"):
        load_config(None, ["sft.global_batch_size=10", "sft.micro_batch_size=4"])
    with pytest.raises(ConfigError, match=r"'sft.optim.lr'.*must be in \(0, 1\]"):
        load_config(None, ["sft.optim.lr=0"])
    with pytest.raises(ConfigError, match=r"'monitor.delta'"):
        load_config(None, ["monitor.delta=0.2", "monitor.delta2=0.1"])
    with pytest.raises(ConfigError, match=r"'sft.optim.warmup_steps'"):
        load_config(None, ["sft.max_steps=5", "sft.optim.warmup_steps=6"])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "run: [unclosed\n"))
    with pytest.raises(ConfigError, match="override 'novalue'"):
        load_config(None, ["novalue"])


def test_shipped_configs_load():
    from npu_retu.configs import CONFIG_DIR

    names = sorted(CONFIG_DIR.glob("*.yaml"))
    assert names, "no shipped configs"
    for p in names:
        load_config(p)


def test_a_partial_section_keeps_its_own_defaults_not_the_class_defaults():
    # rl.optim defaults to a constant schedule at lr 1e-6 (Appendix B), unlike sft.optim;
    # overriding one key of it must keep the others
    from npu_retu.config import load_config

    cfg = load_config(None, ["rl.optim.lr=1e-4"])
    assert (cfg.rl.optim.lr, cfg.rl.optim.schedule, cfg.rl.optim.warmup_steps) == (1e-4, "constant", 0)
    assert cfg.sft.optim.schedule == "cosine"  # the SFT section is untouched
    cfg = load_config(None, ["rl.rollout.top_p=0.9"])
    assert (cfg.rl.rollout.top_p, cfg.rl.rollout.temperature) == (0.9, 0.7)


def test_rl_keys_are_checked_like_every_other_key():
    import pytest

    from npu_retu.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="rl.algorithm"):
        load_config(None, ["rl.algorithm=ppo"])
    with pytest.raises(ConfigError, match="rl.algo.clip_lo"):
        load_config(None, ["rl.algo.clip_lo=0.1"])
    with pytest.raises(ConfigError, match="rl.train_batch_prompts"):
        load_config(None, ["rl.train_batch_prompts=6", "rl.mini_batch_prompts=4"])
    with pytest.raises(ConfigError, match="eval.ks"):
        load_config(None, ["eval.n=2", "eval.ks=[4]"])


# --------------------------------------------------------------------------------------------
# sft.optim (moved from the top-level 'optim')


def test_the_old_top_level_optim_key_says_where_it_moved(tmp_path):
    for source in ({"path": write(tmp_path, "optim:\n  lr: 3.0e-3\n")}, {"overrides": ["optim.lr=3e-3"]}):
        with pytest.raises(ConfigError) as info:
            load_config(**source)
        assert str(info.value) == ("config key 'optim' moved to 'sft.optim' (RL's is 'rl.optim'); "
                                   "e.g. 'optim.lr' is now 'sft.optim.lr'")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "optim: {}\n"))
    assert str(info.value) == "config key 'optim' moved to 'sft.optim' (RL's is 'rl.optim')"


def test_the_old_optim_key_is_one_line_on_the_command_line(capsys):
    from npu_retu.cli import main

    assert main(["sft", "--config", "demo_cpu", "sft.max_steps=100", "optim.lr=1e-3"]) == 2  # the README line, as it was
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["npu-retu sft: error: config key 'optim' moved to 'sft.optim' (RL's is 'rl.optim'); "
                   "e.g. 'optim.lr' is now 'sft.optim.lr'"]


def test_sft_optim_and_rl_optim_are_checked_under_their_own_names():
    cfg = load_config(None, ["sft.optim.lr=3e-4", "sft.optim.schedule=linear", "rl.optim.lr=2e-6"])
    assert (cfg.sft.optim.lr, cfg.sft.optim.schedule, cfg.sft.optim.warmup_steps) == (3e-4, "linear", 0)
    assert (cfg.rl.optim.lr, cfg.rl.optim.schedule) == (2e-6, "constant")  # rl.optim keeps its own defaults
    with pytest.raises(ConfigError, match=r"^config key 'sft.optim.betas': \[0.9\] is not allowed; must be two numbers"):
        load_config(None, ["sft.optim.betas=[0.9]"])
    with pytest.raises(ConfigError, match=r"^config key 'rl.optim.lr': 0.0 is not allowed; must be in \(0, 1\]"):
        load_config(None, ["rl.optim.lr=0"])
    with pytest.raises(ConfigError, match=r"^unknown config key 'sft.optim.learning_rate'; valid keys in 'sft.optim': lr, "):
        load_config(None, ["sft.optim.learning_rate=1e-3"])


def test_sft_optim_reaches_the_sft_engine():
    import torch

    from npu_retu.engine import build_engine
    from npu_retu.engine.local import LocalEngine

    cfg = load_config(None, ["sft.optim.lr=4e-4", "sft.optim.weight_decay=0.05", "sft.optim.betas=[0.8, 0.9]",
                             "sft.optim.eps=1e-6", "sft.optim.warmup_steps=0", "sft.optim.schedule=constant",
                             "engine.fused_ops=false", "rl.optim.lr=1e-6"])
    backend = type("CPU", (), {"device": staticmethod(lambda: torch.device("cpu"))})()
    model = torch.nn.Linear(4, 4)
    engine = build_engine(cfg, model, total_steps=10, backend=backend, world_size=1, micro_batch_size=1, grad_accum_steps=1)
    assert isinstance(engine, LocalEngine) and engine.optim_cfg is cfg.sft.optim
    decayed, plain = engine.optimizer.param_groups  # the weight decays, the bias does not
    assert (decayed["lr"], decayed["betas"], decayed["eps"], decayed["weight_decay"]) == (4e-4, (0.8, 0.9), 1e-6, 0.05)
    assert plain["weight_decay"] == 0.0


def test_sft_trainer_hands_sft_optim_to_the_engine():
    import ast
    from pathlib import Path

    import npu_retu.trainer.sft as sft

    calls = [node for node in ast.walk(ast.parse(Path(sft.__file__).read_text(encoding="utf-8")))
             if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "build_engine"]
    assert len(calls) == 1
    (optim,) = [kw.value for kw in calls[0].keywords if kw.arg == "optim"]
    assert ast.unparse(optim) == "cfg.sft.optim"


# --------------------------------------------------------------------------------------------
# rl.rollout: the vLLM engine's keys


def test_rollout_engine_keys_default_and_load():
    rollout = load_config(None).rl.rollout
    assert (rollout.engine, rollout.is_correction, rollout.is_cap) == ("transformers", "none", 2.0)
    assert (rollout.gpu_memory_utilization, rollout.tensor_parallel_size, rollout.cpu_kv_cache_gb) == (0.5, 1, 1.0)
    assert (rollout.sleep_level, rollout.enforce_eager) == (0, True)
    rollout = load_config(None, ["rl.rollout.engine=vllm", "rl.rollout.is_correction=tis", "rl.rollout.is_cap=5",
                                 "rl.rollout.gpu_memory_utilization=1", "rl.rollout.tensor_parallel_size=2",
                                 "rl.rollout.cpu_kv_cache_gb=0.25", "rl.rollout.sleep_level=2",
                                 "rl.rollout.enforce_eager=false"]).rl.rollout
    assert (rollout.engine, rollout.is_correction, rollout.is_cap) == ("vllm", "tis", 5.0)
    assert (rollout.gpu_memory_utilization, rollout.tensor_parallel_size, rollout.cpu_kv_cache_gb) == (1.0, 2, 0.25)
    assert (rollout.sleep_level, rollout.enforce_eager) == (2, False)
    assert load_config(None, ["rl.rollout.engine=auto"]).rl.rollout.engine == "auto"


@pytest.mark.parametrize("override, message", [
    ("rl.rollout.engine=sglang",
     "config key 'rl.rollout.engine': 'sglang' is not allowed; choose one of 'auto', 'transformers', 'vllm'"),
    ("rl.rollout.is_correction=mis",
     "config key 'rl.rollout.is_correction': 'mis' is not allowed; choose one of 'none', 'tis'"),
    ("rl.rollout.is_cap=0", "config key 'rl.rollout.is_cap': 0.0 is not allowed; must be > 0"),
    ("rl.rollout.is_cap=-1", "config key 'rl.rollout.is_cap': -1.0 is not allowed; must be > 0"),
    ("rl.rollout.gpu_memory_utilization=0",
     "config key 'rl.rollout.gpu_memory_utilization': 0.0 is not allowed; must be in (0, 1]"),
    ("rl.rollout.gpu_memory_utilization=1.1",
     "config key 'rl.rollout.gpu_memory_utilization': 1.1 is not allowed; must be in (0, 1]"),
    ("rl.rollout.tensor_parallel_size=0", "config key 'rl.rollout.tensor_parallel_size': 0 is not allowed; must be >= 1"),
    ("rl.rollout.tensor_parallel_size=1.5", "config key 'rl.rollout.tensor_parallel_size': expected an integer, got 1.5"),
    ("rl.rollout.cpu_kv_cache_gb=0", "config key 'rl.rollout.cpu_kv_cache_gb': 0.0 is not allowed; must be > 0"),
    ("rl.rollout.sleep_level=3", "config key 'rl.rollout.sleep_level': 3 is not allowed; must be 0, 1 or 2"),
    ("rl.rollout.sleep_level=-1", "config key 'rl.rollout.sleep_level': -1 is not allowed; must be 0, 1 or 2"),
    ("rl.rollout.enforce_eager=yes_please", "config key 'rl.rollout.enforce_eager': expected true or false, got 'yes_please'"),
])
def test_rollout_engine_keys_are_checked(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert str(info.value) == message
