"""The wiring of the DeepSpeed engine, the Ray driver and the rank environment, without processes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from npu_retu.config import ConfigError, EngineConfig, OptimConfig, load_config
from npu_retu.device import Backend
from npu_retu.distributed.process_group import rank_info_from_env
from npu_retu.engine.deepspeed_engine import deepspeed_config, resolve_precision
from npu_retu.errors import UserError


def fake_accelerator(bf16=True):
    return SimpleNamespace(is_available=lambda: True, is_bf16_supported=lambda: bf16, current_device=lambda: 0,
                           get_device_name=lambda i: "fake", device_count=lambda: 8)


def test_deepspeed_config_for_zero2_with_accumulation():
    cfg = deepspeed_config(EngineConfig(name="deepspeed", zero_stage=2), OptimConfig(max_grad_norm=1.0),
                           micro_batch_size=4, grad_accum_steps=8, world_size=16, precision="bf16")
    assert cfg["train_batch_size"] == 512  # 4 x 8 x 16: the paper's SFT batch on 16 devices
    assert cfg["train_micro_batch_size_per_gpu"] == 4 and cfg["gradient_accumulation_steps"] == 8
    assert cfg["zero_optimization"]["stage"] == 2
    assert cfg["bf16"] == {"enabled": True}
    assert cfg["gradient_clipping"] == 1.0
    assert "offload_optimizer" not in cfg["zero_optimization"] and "optimizer" not in cfg


def test_deepspeed_config_offload_and_zero3():
    engine = EngineConfig(name="deepspeed", zero_stage=3, offload_optimizer="cpu", offload_params="cpu")
    cfg = deepspeed_config(engine, OptimConfig(lr=1e-5, weight_decay=0.1, max_grad_norm=0.0),
                           micro_batch_size=1, grad_accum_steps=2, world_size=2, precision="fp32")
    zero = cfg["zero_optimization"]
    assert zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    # offloaded optimizer: DeepSpeed's own (CPU) AdamW with our hyperparameters
    assert cfg["optimizer"]["type"] == "AdamW"
    assert cfg["optimizer"]["params"]["lr"] == 1e-5 and cfg["optimizer"]["params"]["weight_decay"] == 0.1
    assert cfg["gradient_clipping"] == 0.0 and cfg["bf16"] == {"enabled": False}


def test_precision_auto_follows_the_device():
    cpu = Backend("cpu")
    accel = Backend("cuda", accelerator=fake_accelerator(bf16=True))
    old = Backend("npu", accelerator=fake_accelerator(bf16=False))
    assert resolve_precision(EngineConfig(), cpu) == "fp32"
    assert resolve_precision(EngineConfig(), accel) == "bf16"
    assert resolve_precision(EngineConfig(), old) == "fp32"
    assert resolve_precision(EngineConfig(precision="bf16"), cpu) == "bf16"


def test_engine_and_cluster_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="engine.zero_stage"):
        load_config(None, ["engine.zero_stage=4"])
    with pytest.raises(ConfigError, match="engine.offload_params"):
        load_config(None, ["engine.name=deepspeed", "engine.zero_stage=2", "engine.offload_params=cpu"])
    with pytest.raises(ConfigError, match="engine.offload_optimizer"):
        load_config(None, ["engine.offload_optimizer=cpu"])  # the local engine cannot offload
    with pytest.raises(ConfigError, match="cluster.launcher"):
        load_config(None, ["cluster.launcher=slurm"])
    with pytest.raises(ConfigError, match="cluster.master_port"):
        load_config(None, ["cluster.master_port=70000"])
    cfg = load_config(None, ["engine.name=deepspeed", "engine.zero_stage=3", "engine.offload_params=cpu"])
    assert cfg.engine.offload_params == "cpu"


def test_ray_bundles_and_actor_options_per_backend():
    cpu = Backend("cpu")
    gpu = Backend("cuda", accelerator=fake_accelerator())
    npu = Backend("npu", accelerator=fake_accelerator())
    assert cpu.ray_bundle(2) == {"CPU": 2.0}
    assert gpu.ray_bundle(4) == {"CPU": 4.0, "GPU": 1.0}
    assert npu.ray_bundle(4) == {"CPU": 4.0, "NPU": 1.0}
    assert cpu.ray_actor_options(1) == {"num_cpus": 1}
    assert gpu.ray_actor_options(4) == {"num_cpus": 4, "num_gpus": 1}  # Ray's built-in GPU resource
    assert npu.ray_actor_options(4) == {"num_cpus": 4, "resources": {"NPU": 1}}  # a custom resource


def test_worker_count_is_one_per_device_unless_given():
    from npu_retu.distributed.ray_driver import worker_count

    npu = Backend("npu", accelerator=fake_accelerator())
    cluster = load_config(None).cluster
    assert worker_count(cluster, npu, {"CPU": 1536.0, "NPU": 128.0}) == 128  # 16 nodes x 8
    cluster.num_workers = 16
    assert worker_count(cluster, npu, {"CPU": 1536.0, "NPU": 128.0}) == 16
    cluster.num_workers = 0
    with pytest.raises(UserError, match="set cluster.num_workers"):
        worker_count(cluster, Backend("cpu"), {"CPU": 2.0})


def test_rank_environment():
    assert rank_info_from_env({}).world_size == 1
    info = rank_info_from_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3", "MASTER_ADDR": "h", "MASTER_PORT": "1"})
    assert (info.rank, info.world_size, info.local_rank, info.is_main) == (3, 8, 3, False)
    with pytest.raises(UserError, match="MASTER_ADDR"):
        rank_info_from_env({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(UserError, match="RANK=2 and WORLD_SIZE=2"):
        rank_info_from_env({"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"})
    with pytest.raises(UserError, match="WORLD_SIZE='two'"):
        rank_info_from_env({"WORLD_SIZE": "two"})


def test_rl_refuses_zero3():
    from npu_retu.trainer.rl import check_rl_scale

    with pytest.raises(UserError, match="engine.zero_stage=3 with RL"):
        check_rl_scale(load_config(None, ["engine.name=deepspeed", "engine.zero_stage=3"]))
    check_rl_scale(load_config(None, ["engine.name=deepspeed", "engine.zero_stage=2"]))
    check_rl_scale(load_config(None))


def test_interleave_undoes_the_round_robin_split():
    from npu_retu.distributed.process_group import interleave

    items = list(range(11))
    for world in (1, 2, 3, 4, 11, 13):
        assert interleave([items[r::world] for r in range(world)]) == items


def test_merged_shard_results_equal_the_whole_evaluation():
    from npu_retu.eval.runner import EvalResult, merge_results
    from npu_retu.eval.metrics import avg_at_k, mean_pass_at_k

    scores = [[1, 0], [0, 0], [1, 1], [0, 1], [1, 0]]
    def part(rows, tokens, truncated):
        return EvalResult(scores=rows, avg_at_n=0.0, avg_at_n_stderr=0.0, pass_at_k={}, n=2, temperature=0.7, top_p=1.0,
                          max_new_tokens=9, num_problems=len(rows), seed=1, mean_response_tokens=tokens, truncated_fraction=truncated)
    merged = merge_results([part(scores[0::2], 10.0, 0.5), part(scores[1::2], 4.0, 0.0)], ks=(1, 2))
    assert merged.scores == scores and merged.num_problems == 5
    assert merged.avg_at_n == pytest.approx(avg_at_k(scores)) == pytest.approx(0.5)
    assert merged.pass_at_k[2] == pytest.approx(mean_pass_at_k([[s > 0 for s in r] for r in scores], 2)) == pytest.approx(0.8)
    # sample-weighted: 6 samples at 10 tokens, 4 at 4
    assert merged.mean_response_tokens == pytest.approx((6 * 10 + 4 * 4) / 10)
    assert merged.truncated_fraction == pytest.approx(0.3)


def test_pipeline_refuses_the_ray_launcher(tmp_path):
    from npu_retu.trainer.pipeline import run_pipeline

    cfg = load_config(None, ["cluster.launcher=ray", f"run.output_dir={tmp_path}"])
    with pytest.raises(UserError, match="npu-retu sft"):
        run_pipeline(cfg)
    assert not any(tmp_path.iterdir())  # refused before writing anything


def test_sft_refuses_a_batch_that_does_not_split_over_the_ranks(tmp_path, monkeypatch):
    from npu_retu.trainer.sft import train_sft

    for key, value in {"RANK": "0", "WORLD_SIZE": "3", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr("npu_retu.distributed.process_group.init_process_group",
                        lambda backend, timeout_s=0: rank_info_from_env())
    cfg = load_config(None, ["sft.global_batch_size=8", "sft.micro_batch_size=2", f"run.output_dir={tmp_path}", "run.device=cpu"])
    with pytest.raises(UserError, match=r"multiple of sft.micro_batch_size x ranks \(2 x 3\)"):
        train_sft(cfg)
