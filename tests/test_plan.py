"""`npu-retu plan`: parameter counts, ZeRO memory, activations, FLOPs and wall time, checked against
hand-computed values and the paper's printed compute."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from npu_retu import flops as fl
from npu_retu import plan as pl
from npu_retu.cli import main
from npu_retu.device.chips import CHIP_MEMORY_BYTES, CHIP_PEAK_FLOPS, GIB, memory_bytes_for
from npu_retu.errors import UserError
from npu_retu.models.presets import get_preset

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
QWEN_SFT = str(CONFIGS / "qwen2.5-7b_sft889k_ascend.yaml")
QWEN_RL = str(CONFIGS / "qwen2.5-7b_dapo_dc_ascend.yaml")
SFT_CONFIGS = sorted(CONFIGS.glob("*_sft889k_*.yaml"))
RL_CONFIGS = sorted(CONFIGS.glob("*_dapo_dc_*.yaml"))

QWEN7B = pl.model_spec(get_preset("Qwen2.5-7B"))
LLAMA3B = pl.model_spec(get_preset("Llama-3.2-3B"))


def plan_json(capsys, *argv) -> dict:
    assert main(["plan", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def plan_error(capsys, *argv) -> str:
    assert main(["plan", *argv]) == 2
    return capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# parameter counts


def test_qwen2_5_7b_parameter_count_is_the_model_cards():
    # By hand, H=3584, L=28, H_ff=18944, V=152064, 28 heads of 128, 4 KV heads -> D_kv=512:
    #   q 3584*3584 + 3584 (bias) = 12,848,640; k, v 3584*512 + 512 = 1,835,520 each; o 12,845,056
    #   attention 29,364,736; MLP 3*3584*18944 = 203,685,888; norms 2*3584 = 7,168
    #   per layer 233,057,792; x 28 = 6,525,618,176
    #   embedding 152064*3584 = 544,997,376, untied LM head the same; final norm 3,584
    #   total 6,525,618,176 + 2 * 544,997,376 + 3,584 = 7,615,616,512 (Qwen2.5-7B model card: 7.61B)
    count = pl.count_parameters(QWEN7B)
    assert count.attention == 28 * 29_364_736
    assert count.mlp == 28 * 203_685_888
    assert count.embedding == count.lm_head == 544_997_376
    assert count.norms == 28 * 7_168 + 3_584
    assert count.total == 7_615_616_512


def test_llama3_2_3b_counts_tied_embeddings_once():
    # H=3072, L=28, H_ff=8192, V=128256, 24 heads of 128, 8 KV heads -> D_kv=1024, no biases:
    #   attention 2*3072*3072 + 2*3072*1024 = 25,165,824; MLP 3*3072*8192 = 75,497,472; norms 6,144
    #   per layer 100,669,440; x 28 = 2,818,744,320; embedding 128256*3072 = 394,002,432 (tied: once)
    #   total 2,818,744,320 + 394,002,432 + 3,072 = 3,212,749,824 (Llama-3.2-3B model card: 3.21B)
    count = pl.count_parameters(LLAMA3B)
    assert count.lm_head == 0
    assert count.total == 3_212_749_824


def test_small_qwen_counts_and_bias_rules():
    assert pl.count_parameters(pl.model_spec(get_preset("Qwen2.5-0.5B"))).total == 494_032_768
    tiny = {"num_hidden_layers": 1, "hidden_size": 8, "intermediate_size": 16, "vocab_size": 10,
            "num_attention_heads": 2, "num_key_value_heads": 1}
    plain = pl.count_parameters(pl.model_spec(tiny)).total
    # q 64, k 32, v 32, o 64, MLP 384, norms 16 + 8, embedding and LM head 80 each
    assert plain == 64 + 32 + 32 + 64 + 384 + 16 + 8 + 160
    assert pl.count_parameters(pl.model_spec({**tiny, "model_type": "qwen2"})).total == plain + 8 + 4 + 4
    assert pl.count_parameters(pl.model_spec({**tiny, "attention_bias": True})).total == plain + 8 + 4 + 4 + 8
    assert pl.count_parameters(pl.model_spec({**tiny, "mlp_bias": True})).total == plain + 16 + 16 + 8
    assert pl.count_parameters(pl.model_spec({**tiny, "tie_word_embeddings": True})).total == plain - 80


# ----------------------------------------------------------------------------------------------
# ZeRO model states


def test_zero_stages_match_the_zero_paper_figure_1():
    # ZeRO paper Fig. 1: Psi = 7.5 B, N_d = 64, K = 12 -> 120 GB, 31.4 GB, 16.6 GB, 1.9 GB per device
    psi, n, mixed = 7_500_000_000, 64, pl.STATE_BYTES["bf16"]
    totals = [pl.zero_state_bytes(psi, stage=s, dp_size=n, per_param=mixed).device_total for s in range(4)]
    assert totals[0] == 16 * psi == 120e9
    assert totals[1] == pytest.approx((2 + 2) * psi + 12 * psi / 64) and round(totals[1] / 1e9, 1) == 31.4
    assert totals[2] == pytest.approx(2 * psi + (2 + 12) * psi / 64) and round(totals[2] / 1e9, 1) == 16.6
    assert totals[3] == pytest.approx(16 * psi / 64) == 1.875e9


def test_zero_offload_moves_bytes_to_the_host():
    psi, n, mixed = 7_500_000_000, 64, pl.STATE_BYTES["bf16"]
    s2 = pl.zero_state_bytes(psi, stage=2, dp_size=n, per_param=mixed, offload_optimizer=True)
    assert (s2.weights, s2.gradients, s2.optimizer, s2.host) == (2 * psi, 2 * psi / 64, 0.0, 12 * psi / 64)
    s3 = pl.zero_state_bytes(psi, stage=3, dp_size=n, per_param=mixed, offload_optimizer=True, offload_params=True)
    assert (s3.weights, s3.optimizer, s3.host) == (0.0, 0.0, 14 * psi / 64)
    fp32 = pl.zero_state_bytes(psi, stage=0, dp_size=n, per_param=pl.STATE_BYTES["fp32"])
    assert fp32.device_total == 16 * psi  # 4 + 4 + 8
    assert pl.local_state_bytes("bfloat16") == pl.StateBytesPerParam(2, 2, 4)
    for kwargs, message in (({"stage": 4}, "ZeRO stage"), ({"stage": 0, "offload_optimizer": True}, "stage >= 1"),
                            ({"stage": 2, "offload_params": True}, "stage 3"), ({"stage": 1, "dp_size": 0}, ">= 1")):
        with pytest.raises(UserError, match=message):
            pl.zero_state_bytes(psi, **{"dp_size": n, "per_param": mixed, **kwargs})


def test_zero_buffers():
    mixed, bucket = pl.STATE_BYTES["bf16"], 500_000_000
    p = pl.count_parameters(QWEN7B).total
    assert pl.zero_buffer_bytes(QWEN7B, p, stage=0, bucket_elements=bucket, per_param=mixed) == 0
    assert pl.zero_buffer_bytes(QWEN7B, p, stage=2, bucket_elements=bucket, per_param=mixed) == 2 * bucket
    # stage 3 also gathers the largest module (the 152064 x 3584 embedding) plus a prefetch bucket
    assert pl.largest_module_parameters(QWEN7B) == 544_997_376
    assert pl.zero_buffer_bytes(QWEN7B, p, stage=3, bucket_elements=bucket, per_param=mixed) == 2 * bucket + 2 * (544_997_376 + bucket)


# ----------------------------------------------------------------------------------------------
# activations, logits, KV cache


def test_layer_activations_by_hand():
    # s=1024, b=2, h=4096, a=32 heads of 128, multi-head (D_kv = h), H_ff = 4h: sbh = 8,388,608;
    # coefficient 20 + 4*1 + 4*128/4096 + 8*4 = 56.125; eager adds 5*a*s/h = 5*32*1024/4096 = 40
    s, b, h, a = 1024, 2, 4096, 32
    flash = pl.layer_activation_bytes(seq_len=s, micro_batch=b, hidden=h, heads=a, ffn=4 * h, flash_attention=True)
    eager = pl.layer_activation_bytes(seq_len=s, micro_batch=b, hidden=h, heads=a, ffn=4 * h, flash_attention=False)
    assert flash == 8_388_608 * 56.125 == 470_810_624
    assert eager == 8_388_608 * (56.125 + 40)
    assert eager - flash == 5 * a * s * s * b  # Korthikanti's 5·a·s²·b score / softmax / dropout bytes
    fp32 = pl.layer_activation_bytes(seq_len=s, micro_batch=b, hidden=h, heads=a, ffn=4 * h, flash_attention=True,
                                     activation_bytes=4)
    assert fp32 == 2 * flash
    # GQA: Qwen2.5-7B (D_kv 512, d 128): 20 + 4*512/3584 + 4*128/3584 + 8*18944/3584 = 63.0 per sbh
    qwen = pl.layer_activation_bytes(seq_len=1, micro_batch=1, hidden=3584, heads=28, ffn=18944, flash_attention=True,
                                     kv_dim=512, head_dim=128)
    assert qwen / 3584 == pytest.approx(20 + 4 * 512 / 3584 + 4 * 128 / 3584 + 8 * 18944 / 3584) == pytest.approx(63.0)


@pytest.mark.parametrize("kv_heads", [1, 4])
def test_layer_activations_match_what_a_transformers_qwen2_layer_saves(kv_heads):
    # The reference: the bytes of every distinct tensor autograd saves in one bf16 Qwen2 decoder layer
    # (sdpa attention) during its forward pass, parameters excluded, next to the formula.
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    h, ffn, heads, s, b = 256, 1354, 4, 128, 2
    config = transformers.Qwen2Config(hidden_size=h, intermediate_size=ffn, num_attention_heads=heads,
                                      num_key_value_heads=kv_heads, num_hidden_layers=1, vocab_size=64,
                                      attn_implementation="sdpa")
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(config).to(torch.bfloat16).train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    x = torch.randn(b, s, h, dtype=torch.bfloat16, requires_grad=True)
    positions = torch.arange(s).unsqueeze(0).expand(b, -1)
    saved: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.model.layers[0](x, attention_mask=None, position_ids=positions,
                              position_embeddings=model.model.rotary_emb(x, positions))
    expected = pl.layer_activation_bytes(seq_len=s, micro_batch=b, hidden=h, heads=heads, ffn=ffn,
                                         flash_attention=True, kv_dim=kv_heads * h // heads, head_dim=h // heads)
    # the formula leaves out the fp32 RMSNorm statistics and the attention log-sum-exp (O(s·b))
    assert sum(saved.values()) == pytest.approx(expected, rel=0.01)


def test_activation_totals_with_and_without_checkpointing():
    kw = {"seq_len": 4096, "micro_batch": 1, "flash_attention": True}
    with_ckpt = pl.activation_bytes(QWEN7B, gradient_checkpointing=True, **kw)
    assert with_ckpt["layer_inputs"] == 2 * 4096 * 3584 * 28
    layer = pl.layer_activation_bytes(seq_len=4096, micro_batch=1, hidden=3584, heads=28, ffn=18944, flash_attention=True,
                                      kv_dim=512, head_dim=128)
    assert with_ckpt["one_layer"] == layer
    assert pl.activation_bytes(QWEN7B, gradient_checkpointing=False, **kw)["all_layers"] == 28 * layer


def test_logits_kv_cache_and_mask():
    assert pl.logits_bytes(seq_len=16384, micro_batch=1, vocab_size=152064) == 10 * 16384 * 152064
    assert pl.kv_cache_bytes(QWEN7B, sequences=1, seq_len=1) == 57_344  # 2 x 28 layers x 512 x 2 bytes
    assert pl.kv_cache_bytes(QWEN7B, sequences=8, seq_len=9216) == 8 * 9216 * 57_344
    assert pl.attention_mask_bytes(seq_len=100, micro_batch=3) == 3 * 100 * 100 * 2


def test_memory_rows_peak_is_states_plus_the_larger_transient():
    w = pl.Workload(seq_len=16384, micro_batch=1, gradient_checkpointing=True, flash_attention=True, padded=False)
    rows = pl.memory_rows(QWEN7B, w, dp_size=16, per_param=pl.STATE_BYTES["bf16"], hbm_bytes=64 * GIB)
    p = pl.count_parameters(QWEN7B).total
    z2 = rows[2]
    logits = 10 * 16384 * 152064
    assert z2["train_peak"] == pytest.approx(2 * p + 14 * p / 16 + 1e9 + 2 * 16384 * 3584 * 28 + logits)
    assert z2["fits"] is True and rows[0]["fits"] is False
    assert z2["usable_hbm"] == pytest.approx(0.9 * 64 * GIB)
    rl = pl.Workload(seq_len=9216, micro_batch=4, gradient_checkpointing=True, flash_attention=True, padded=True,
                     logits_bytes_per_entry=0, rollout_sequences=8, rollout_seq_len=9216)
    (r,) = pl.memory_rows(QWEN7B, rl, dp_size=128, per_param=pl.STATE_BYTES["bf16"], stages=(2,))
    resident = r["weights"] + r["gradients"] + r["optimizer"] + r["zero_buffers"]
    assert r["logits"] == 0 and r["rollout_peak"] == pytest.approx(resident + 8 * 9216 * 57_344)
    assert r["peak"] == max(r["train_peak"], r["rollout_peak"]) and r["fits"] is None


# ----------------------------------------------------------------------------------------------
# time and steps


def test_wall_time_and_steps_by_hand():
    # 1e18 FLOPs on 16 x 376 TFLOP/s at MFU 0.4: 1e18 / (16 * 376e12 * 0.4) = 415.558... s
    assert pl.wall_seconds(1e18, devices=16, peak_flops_per_device=376e12, mfu=0.4) == pytest.approx(415.5585, rel=1e-6)
    # plan counts SFT steps as the trainer does (npu_retu.trainer.sft.total_steps)
    from npu_retu.config import load_config
    from npu_retu.trainer.sft import total_steps

    cfg = load_config(None, ["sft.epochs=8", "sft.global_batch_size=512", "sft.micro_batch_size=8"])
    assert total_steps(cfg, 889_000) == 13_891  # ceil(13,890.625)
    assert total_steps(cfg, 901_120) == 14_080
    with pytest.raises(UserError):
        pl.wall_seconds(1.0, devices=1, peak_flops_per_device=1.0, mfu=1.5)
    assert [pl.format_duration(x) for x in (5, 42, 600, 7200, 3 * 86400)] == ["5.0 s", "42 s", "10.0 min", "2.0 h", "3.0 d"]


def test_chip_memory_table():
    assert set(CHIP_MEMORY_BYTES) == set(CHIP_PEAK_FLOPS)
    assert memory_bytes_for("Ascend910B2") == 64 * GIB
    assert memory_bytes_for("Ascend910B4-1") == 32 * GIB
    assert memory_bytes_for("NVIDIA A100-SXM4-40GB") == 40 * GIB
    assert memory_bytes_for("NVIDIA A100-SXM4-80GB") == 80 * GIB
    assert memory_bytes_for("NVIDIA H200") == 141 * GIB
    assert memory_bytes_for("AMD EPYC") is None and memory_bytes_for(None) is None


# ----------------------------------------------------------------------------------------------
# the CLI against the paper


def test_sft889k_plan_reproduces_table4(capsys):
    r = plan_json(capsys, "--config", QWEN_SFT, "--nodes", "2", "--devices-per-node", "8", "--chip", "Ascend910B2")
    assert r["model"]["parameters"] == 7_615_616_512
    compute = r["compute"]
    assert (compute["mean_seq_len"], compute["checkpoint_every"]) == (3771, 360)
    (case,) = compute["cases"]
    assert case["per_checkpoint"]["exaflops"] == pytest.approx(34.9, abs=0.05)  # Table 4, SFT889K @ 360
    step = fl.sft_step_flops(fl.ModelShape.from_hf_config(get_preset("Qwen2.5-7B")), 512, 3771)
    assert case["per_step"]["flops"] == step  # the flops module's Eq. 21, not a re-derivation
    # wall time = FLOPs / (16 x 376 TFLOP/s x 0.4)
    assert case["per_step"]["seconds"] == pytest.approx(step / (16 * 376e12 * 0.4))
    assert compute["steps"] == 13_891 and case["phase"]["flops"] == pytest.approx(13_891 * step)
    checks = {c["step"]: c for c in compute["paper_check"]}
    # 14,080 steps: 1365.58 against the paper's 1365.8 (the paper's mean length was not exactly 3771;
    # the same tolerance as tests/test_flops.py's Table 4 check)
    assert checks[14080]["ours_exaflops"] == pytest.approx(1365.8, abs=0.05 + 2e-4 * 1365.8)
    assert checks[360]["ours_exaflops"] == pytest.approx(34.9, abs=0.05)
    assert any("14,080" in n and "13,891" in n for n in r["notes"])  # the row-count discrepancy is reported


def test_rows_option_gives_the_papers_14080_steps(capsys):
    r = plan_json(capsys, "--config", QWEN_SFT, "--nodes", "2", "--devices-per-node", "8", "--chip", "H100-SXM",
                  "--rows", "901120", "--mfu", "0.5")
    (case,) = r["compute"]["cases"]
    assert r["compute"]["steps"] == 14_080
    assert case["phase"]["exaflops"] == pytest.approx(1365.8, abs=0.05 + 2e-4 * 1365.8)
    assert case["per_step"]["seconds"] == pytest.approx(case["per_step"]["flops"] / (16 * 989.4e12 * 0.5))
    assert not any("14,080" in n for n in r["notes"])


def test_llama_plan_reproduces_section_6_3(capsys):
    r = plan_json(capsys, "--config", str(CONFIGS / "llama3.2-3b_sft889k_cuda.yaml"), "--nodes", "2",
                  "--devices-per-node", "8", "--chip", "H100-SXM")
    assert r["model"]["parameters"] == 3_212_749_824
    checks = {c["step"]: c["ours_exaflops"] for c in r["compute"]["paper_check"]}
    assert checks[360] == pytest.approx(17.8, abs=0.06)  # §6.3: 17.75
    assert checks[10800] == pytest.approx(532.5, abs=0.05 + 2e-4 * 532.5)  # §6.3: 532.39


def test_memory_columns_in_the_cli(capsys):
    r = plan_json(capsys, "--config", QWEN_SFT, "--nodes", "2", "--devices-per-node", "8", "--chip", "Ascend910B2")
    assert [c["name"] for c in r["memory"]] == ["ZeRO-0", "ZeRO-1", "ZeRO-2", "ZeRO-3"]
    assert [c["configured"] for c in r["memory"]] == [False, False, True, False]
    p = 7_615_616_512
    z2 = r["memory"][2]
    assert (z2["weights"], z2["gradients"], z2["optimizer"]) == (2 * p, 2 * p / 16, 12 * p / 16)
    # sft.kernels=auto: the fused loss holds no logits, so ZeRO-1 fits too (micro-batch 2 of 16K tokens)
    assert all(c["logits"] == 0 for c in r["memory"])
    assert [c["fits"] for c in r["memory"]] == [False, True, True, True]
    # the full-logits loss holds 10 bytes per token and vocabulary entry (46 GiB for two 16K-token
    # sequences): no stage fits at this micro-batch, and at micro-batch 1 only ZeRO-2 and ZeRO-3 do
    r = plan_json(capsys, "--config", QWEN_SFT, "sft.kernels=unfused", "--nodes", "2", "--devices-per-node", "8",
                  "--chip", "Ascend910B2")
    assert r["memory"][2]["logits"] == 10 * 16384 * 2 * 152064
    assert [c["fits"] for c in r["memory"]] == [False, False, False, False]
    r = plan_json(capsys, "--config", QWEN_SFT, "sft.kernels=unfused", "sft.micro_batch_size=1", "sft.eval_batch_size=1",
                  "--nodes", "2", "--devices-per-node", "8", "--chip", "Ascend910B2")
    assert [c["fits"] for c in r["memory"]] == [False, False, True, True]
    # a local-engine config gets its own column, marked configured
    r = plan_json(capsys, "--config", QWEN_SFT, "engine.name=local", "--nodes", "2", "--devices-per-node", "8",
                  "--chip", "H200")
    local = r["memory"][-1]
    assert local["name"] == "local" and local["configured"] and local["weights"] == 2 * p and local["optimizer"] == 4 * p


def test_rl_plan_reports_both_ends_of_the_draw_range(capsys):
    r = plan_json(capsys, "--config", QWEN_RL, "--phase", "rl", "--nodes", "16", "--devices-per-node", "8",
                  "--chip", "Ascend910B2")
    shape = fl.ModelShape.from_hf_config(get_preset("Qwen2.5-7B"))
    cases = {c["rounds"]: c for c in r["compute"]["cases"]}
    assert set(cases) == {1, 10}
    for k, case in cases.items():
        expected = fl.dapo_step_flops(shape, gen_batch=128, rounds=k, group_size=8, train_batch=64, seq_len=9216)
        assert case["per_step"]["flops"] == expected
        assert case["phase"]["flops"] == pytest.approx(500 * expected)
        assert case["per_step"]["seconds"] == pytest.approx(expected / (128 * 376e12 * 0.4))
    assert r["batch"]["sequences_per_device_per_mini_batch"] == 4
    assert r["batch"]["rollout_sequences_per_device"] == 8
    z2 = r["memory"][2]
    assert z2["logits"] == 0  # fused log-prob kernels
    assert z2["kv_cache"] == 8 * 9216 * 57_344
    r = plan_json(capsys, "--config", QWEN_RL, "--phase", "rl", "--nodes", "16", "--devices-per-node", "8",
                  "--chip", "Ascend910B2", "--rounds", "3", "--seq-len", "5000", "rl.kernels=unfused")
    (case,) = r["compute"]["cases"]
    assert case["per_step"]["flops"] == fl.dapo_step_flops(shape, gen_batch=128, rounds=3, group_size=8,
                                                           train_batch=64, seq_len=5000)
    assert r["memory"][2]["logits"] == 10 * 9216 * 4 * 152064


@pytest.mark.parametrize("config", SFT_CONFIGS, ids=lambda p: p.name)
@pytest.mark.parametrize("chip", ["Ascend910B2", "H100-SXM"])
def test_cli_runs_on_every_sft_config(config, chip, capsys):
    assert main(["plan", "--config", str(config), "--nodes", "2", "--devices-per-node", "8", "--chip", chip]) == 0
    out = capsys.readouterr().out
    assert "ZeRO-2*" in out and "paper check" in out


@pytest.mark.parametrize("config", RL_CONFIGS, ids=lambda p: p.name)
def test_cli_runs_on_every_rl_config(config, capsys):
    assert main(["plan", "--config", str(config), "--phase", "rl", "--nodes", "16", "--devices-per-node", "8",
                 "--chip", "Ascend910B2"]) == 0
    assert "K=10" in capsys.readouterr().out


@pytest.mark.parametrize("config", SFT_CONFIGS + RL_CONFIGS, ids=lambda p: p.name)
def test_each_paper_config_fits_the_hardware_it_names(config, capsys):
    # the settings in each file are the ones the plan says fit on the hardware the file is for
    ascend = "_ascend" in config.name
    sft = "_sft889k_" in config.name
    nodes = 2 if sft else (16 if ascend else 8)
    r = plan_json(capsys, "--config", str(config), "--phase", "sft" if sft else "rl", "--nodes", str(nodes),
                  "--devices-per-node", "8", "--chip", "Ascend910B2" if ascend else "H100-SXM")
    (configured,) = [c for c in r["memory"] if c["configured"]]
    assert configured["fits"], config.name
    assert not [n for n in r["notes"] if "cluster.num_workers" in n or "multiple" in n or "evenly" in n]


# ----------------------------------------------------------------------------------------------
# inputs and errors


def test_model_from_a_folder_and_from_path_components(tmp_path, capsys):
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(get_preset("Llama-3.2-3B")))
    r = plan_json(capsys, "--config", QWEN_SFT, f"model.path={folder}", "--nodes", "1", "--devices-per-node", "8",
                  "--chip", "H200")
    assert r["model"]["parameters"] == 3_212_749_824 and "config.json" in r["model"]["source"]
    r = plan_json(capsys, "--config", QWEN_SFT, "--model", "Qwen2.5-0.5B", "--nodes", "1", "--devices-per-node", "1",
                  "--chip", "A100-40GB", "--mean-len", "1000", "--rows", "5120")
    assert r["model"]["parameters"] == 494_032_768 and r["compute"]["steps"] == math.ceil(8 * 5120 / 512)
    assert "paper_check" not in r["compute"]
    err = plan_error(capsys, "--config", QWEN_SFT, "model.path=/somewhere/my-model", "--nodes", "1",
                     "--devices-per-node", "8", "--chip", "H200")
    assert "--model" in err and "model.path" in err


@pytest.mark.parametrize(
    "extra, flag",
    [
        (["--nodes", "0", "--devices-per-node", "8", "--chip", "Ascend910B2"], "--nodes"),
        (["--nodes", "2", "--devices-per-node", "0", "--chip", "Ascend910B2"], "--devices-per-node"),
        (["--nodes", "2", "--devices-per-node", "8", "--chip", "Ascend999"], "--chip"),
        (["--nodes", "2", "--devices-per-node", "8", "--chip", "H100-SXM", "--mfu", "0"], "--mfu"),
        (["--nodes", "2", "--devices-per-node", "8", "--chip", "H100-SXM", "--headroom", "1"], "--headroom"),
        (["--nodes", "2", "--devices-per-node", "8", "--chip", "H100-SXM", "--rows", "0"], "--rows"),
        (["--nodes", "2", "--devices-per-node", "8", "--chip", "H100-SXM", "--seq-len", "100"], "--seq-len"),
        (["--nodes", "2", "--devices-per-node", "8", "--chip", "H100-SXM", "--phase", "rl", "--rows", "9"], "--rows"),
        (["--nodes", "2", "--devices-per-node", "8", "--chip", "H100-SXM", "--phase", "rl", "--rounds", "0.5"], "--rounds"),
    ],
)
def test_bad_inputs_exit_2_naming_the_option(extra, flag, capsys):
    err = plan_error(capsys, "--config", QWEN_SFT, *extra)
    assert flag in err and "Traceback" not in err


def test_sft_without_a_known_dataset_asks_for_the_length_and_rows(capsys):
    base = ["--config", QWEN_SFT, "data.train_files=[/data/mine.jsonl]", "--nodes", "2", "--devices-per-node", "8",
            "--chip", "H100-SXM"]
    assert "--mean-len" in plan_error(capsys, *base)
    assert "--rows" in plan_error(capsys, *base, "--mean-len", "2000")
    r = plan_json(capsys, "--config", QWEN_SFT, "data.train_files=[/data/mine.jsonl]", "sft.max_steps=2000",
                  "--nodes", "2", "--devices-per-node", "8", "--chip", "H100-SXM", "--mean-len", "2000")
    assert r["compute"]["steps"] == 2000


def test_batch_that_does_not_split_is_noted(capsys):
    r = plan_json(capsys, "--config", QWEN_SFT, "--nodes", "3", "--devices-per-node", "8", "--chip", "H100-SXM")
    assert any("not a multiple" in n for n in r["notes"]) and any("cluster.num_workers" in n for n in r["notes"])
