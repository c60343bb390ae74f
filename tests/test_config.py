import pytest

from npu_retu.config import Config, ConfigError, load_config


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_and_yaml_and_overrides(tmp_path):
    p = write(tmp_path, "run:\n  name: x\nsft:\n  global_batch_size: 64\n  micro_batch_size: 16\noptim:\n  lr: 1e-5\n")
    cfg = load_config(p, ["sft.max_steps=7", "optim.betas=[0.9, 0.99]", "monitor.pick=mild", "data.train_files=a.jsonl"])
    assert isinstance(cfg, Config)
    assert cfg.run.name == "x"
    assert cfg.sft.global_batch_size == 64 and cfg.sft.max_steps == 7
    assert cfg.optim.lr == 1e-5  # YAML reads "1e-5" as a string; it must still become a float
    assert cfg.optim.betas == [0.9, 0.99]
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
    with pytest.raises(ConfigError, match=r"'optim.lr'.*must be in \(0, 1\]"):
        load_config(None, ["optim.lr=0"])
    with pytest.raises(ConfigError, match=r"'monitor.delta'"):
        load_config(None, ["monitor.delta=0.2", "monitor.delta2=0.1"])
    with pytest.raises(ConfigError, match=r"'optim.warmup_steps'"):
        load_config(None, ["sft.max_steps=5", "optim.warmup_steps=6"])


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
    # rl.optim defaults to a constant schedule at lr 1e-6 (Appendix B), unlike the SFT optim section;
    # overriding one key of it must keep the others
    from npu_retu.config import load_config

    cfg = load_config(None, ["rl.optim.lr=1e-4"])
    assert (cfg.rl.optim.lr, cfg.rl.optim.schedule, cfg.rl.optim.warmup_steps) == (1e-4, "constant", 0)
    assert cfg.optim.schedule == "cosine"  # the SFT section is untouched
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
