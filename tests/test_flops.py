"""FLOPs accounting (paper Appendix C): hand-computed values, the paper's Table 4, the CLI."""

from __future__ import annotations

import json

import pytest

from npu_retu import flops as fl
from npu_retu.cli import main
from npu_retu.errors import UserError
from npu_retu.models.presets import get_preset

# A tiny made-up model: L=2, H=8, H_ff=16, V=32, 2 attention heads, 1 KV head -> head_dim 4, D_kv 4.
TINY_CONFIG = {
    "num_hidden_layers": 2,
    "hidden_size": 8,
    "intermediate_size": 16,
    "vocab_size": 32,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
}
TINY = fl.ModelShape(num_layers=2, hidden_size=8, intermediate_size=16, vocab_size=32, kv_dim=4)
# By hand (Eq. 18-19):
#   P_mlp         = 3 * 8 * 16         = 384
#   P_attn_linear = 2 * 8 * (8 + 4)    = 192
#   L * (P_mlp + P_attn_linear)        = 2 * 576 = 1152
#   P_vocab       = 2 * 32 * 8         = 512
#   F_dense       = 2 * (1152 + 512)   = 3328
#   F_attn_core   = 4 * S * 2 * 8      = 64 * S
TINY_F10 = 3328 + 640  # F_fwd(S=10) = 3968
TINY_F20 = 3328 + 1280  # F_fwd(S=20) = 4608
TINY_F8 = 3328 + 512  # F_fwd(S=8) = 3840

# Qwen2.5-7B (L=28, H=3584, H_ff=18944, V=152064, D_kv=4*128=512), by hand:
#   3*3584*18944 = 203,685,888; 2*3584*(3584+512) = 29,360,128; sum * 28 = 6,525,288,448
#   2*152064*3584 = 1,089,994,752; F_dense = 2 * (6,525,288,448 + 1,089,994,752) = 15,230,566,400
#   F_attn_core = 4*28*3584*S = 401,408 * S; at S=3771 (SFT889K): 1,513,709,568
QWEN7B_DENSE = 15_230_566_400
QWEN7B_F_SFT889K = 16_744_275_968

# The x_sft column of the paper's Table 4 (exaFLOPs), typed in from the paper.
PAPER_TABLE4 = {
    "S1K": {62: 0.6, 124: 1.1, 186: 1.7, 248: 2.3, 310: 2.9},
    "Easy102K": {360: 19.8, 720: 39.5, 1080: 59.3, 1440: 79.0, 1800: 98.8},
    "Uniform102K": {360: 34.7, 720: 69.3, 1080: 104.0, 1440: 138.7, 1800: 173.4},
    "Hard102K": {360: 89.3, 720: 178.5, 1080: 267.8, 1440: 357.0, 1800: 446.3},
    "SFT889K": {
        360: 34.9, 720: 69.8, 1080: 104.8, 1440: 139.7, 1800: 174.6, 3600: 349.2, 5400: 523.8,
        7200: 698.4, 9000: 873.0, 10800: 1047.6, 12600: 1222.2, 14080: 1365.8,
    },
}


def table4_tolerance(paper: float) -> float:
    # With the integer mean lengths RETU states, we get e.g. Hard102K@360 = 89.249 (paper 89.3) and
    # SFT889K@10800 = 1047.46 (paper 1047.6): the paper's mean lengths were evidently not exactly these
    # integers, so its rounding error grows with the step count. 0.05 covers printing to one decimal,
    # 2e-4 relative covers the length rounding; nothing looser, and the inputs are not adjusted.
    return 0.05 + 2e-4 * paper


def qwen7b() -> fl.ModelShape:
    return fl.ModelShape.from_hf_config(get_preset("Qwen2.5-7B"))


# (a) per-token values by hand ------------------------------------------------------------------


def test_forward_and_train_flops_per_token_match_hand_computation():
    assert fl.forward_flops_per_token(TINY, 0) == 3328
    assert fl.forward_flops_per_token(TINY, 10) == TINY_F10 == 3968
    assert fl.train_flops_per_token(TINY, 10) == 3 * 3968
    assert fl.ModelShape.from_hf_config(TINY_CONFIG) == TINY


def test_qwen7b_per_token_matches_hand_computation():
    shape = qwen7b()
    assert shape == fl.ModelShape(28, 3584, 18944, 152064, 512)
    assert fl.forward_flops_per_token(shape, 0) == QWEN7B_DENSE
    assert fl.forward_flops_per_token(shape, 3771) == QWEN7B_F_SFT889K


def test_sft_step_and_tokens_flops():
    # Eq. 21: 3 * B * S * F_fwd(S) = 3 * 2 * 10 * 3968 = 238,080
    assert fl.sft_step_flops(TINY, 2, 10) == 238_080
    # A batch with lengths 6 and 14 has B=2, S=10: the same count.
    assert fl.tokens_flops(TINY, [6, 14], passes=3) == 238_080
    assert fl.tokens_flops(TINY, [6, 14], passes=1) == 20 * 3968
    # Lengths 4, 8, 12: S = 8, 24 tokens, forward only: 24 * 3840 = 92,160
    assert fl.tokens_flops(TINY, [4, 8, 12], passes=1) == 24 * TINY_F8 == 92_160
    assert fl.tokens_flops(TINY, [], passes=3) == 0.0
    with pytest.raises(UserError, match="passes"):
        fl.tokens_flops(TINY, [4], passes=0)
    with pytest.raises(UserError, match=r"seq_lens\[1\]"):
        fl.tokens_flops(TINY, [4, -1], passes=1)


# (b) the paper's Table 4 -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "dataset, step, paper",
    [(name, step, value) for name, by_step in PAPER_TABLE4.items() for step, value in by_step.items()],
)
def test_table4_x_sft_reproduced(dataset, step, paper):
    ours = fl.sft_flops_at_step(qwen7b(), fl.RETU_SFT_DATASETS[dataset], step) / fl.EXA
    assert abs(ours - paper) <= table4_tolerance(paper), (dataset, step, ours, paper)


def test_table4_first_checkpoints_and_table_contents():
    rows = {(r.dataset, r.step): r for r in fl.retu_table4()}
    assert len(rows) == sum(len(v) for v in PAPER_TABLE4.values()) == 32
    firsts = {"SFT889K": (360, 34.9), "Hard102K": (360, 89.3), "Easy102K": (360, 19.8),
              "Uniform102K": (360, 34.7), "S1K": (62, 0.6)}
    for name, (step, paper) in firsts.items():
        row = rows[(name, step)]
        assert row.paper_exaflops == paper
        assert abs(row.exaflops - paper) <= table4_tolerance(paper)
    # The module's copy of the paper column is the one typed in here.
    assert fl.RETU_TABLE4_SFT_EXAFLOPS == PAPER_TABLE4
    # Hand values: SFT889K per step = 3 * 512 * 3771 * 16,744,275,968
    assert rows[("SFT889K", 360)].exaflops == pytest.approx(360 * 3 * 512 * 3771 * QWEN7B_F_SFT889K / 1e18, rel=1e-12)
    assert rows[("SFT889K", 10800)].exaflops == pytest.approx(1047.461, abs=5e-4)
    assert rows[("Hard102K", 360)].exaflops == pytest.approx(89.249, abs=5e-4)


def test_easy102k_long_run_matches_appendix_b():
    # Appendix B.1: "we continue training Easy102K up to 6,120 steps (335.9 exaFLOPs)".
    ours = fl.sft_flops_at_step(qwen7b(), fl.RETU_SFT_DATASETS["Easy102K"], 6120) / fl.EXA
    assert abs(ours - 335.9) <= table4_tolerance(335.9)


# (c) GRPO is DAPO with one round and B_gen = B_train ----------------------------------------------


def test_grpo_equals_dapo_with_one_round():
    grpo = fl.grpo_step_flops(TINY, batch=64, group_size=8, seq_len=10)
    dapo = fl.dapo_step_flops(TINY, gen_batch=64, rounds=1, group_size=8, train_batch=64, seq_len=10)
    # Eq. 23: 4 * B * G * S * F = 4 * 64 * 8 * 10 * 3968
    assert grpo == dapo == 4 * 64 * 8 * 10 * TINY_F10 == 81_264_640


def test_dapo_counts_every_generation_round():
    # Eq. 22: (K * B_gen + 3 * B_train) * G * S * F = (3*128 + 3*64) * 8 * 10 * 3968 = 576 * 80 * 3968
    flops = fl.dapo_step_flops(TINY, gen_batch=128, rounds=3, group_size=8, train_batch=64, seq_len=10)
    assert flops == 182_845_440


# (d) LUFFY/SRFT and UPT ------------------------------------------------------------------------


def test_hybrid_step_flops():
    # Eq. 24 with S_on = S_off = 10: 4 * (B*G*S + B*N*S) * F = 4 * (2*7*10 + 2*1*10) * 3968
    same = fl.hybrid_step_flops(TINY, batch=2, group_size=7, n_expert=1, seq_len_on=10, seq_len_off=10)
    assert same == 4 * 160 * 3968 == 2_539_520
    # S_on = 10, S_off = 20: each group at its own F_fwd:
    #   on-policy 2*7*10*3968 = 555,520; expert 2*1*20*4608 = 184,320; total 4 * 739,840
    mixed = fl.hybrid_step_flops(TINY, batch=2, group_size=7, n_expert=1, seq_len_on=10, seq_len_off=20)
    assert mixed == 4 * (555_520 + 184_320) == 2_959_360


def test_upt_step_flops():
    # Eq. 27: G*S_on*F_on + 3*(N_on*S_on*F_on + N_off*S_off*F_off)
    #   = 8*10*3968 + 3*(8*10*3968 + 1*20*4608) = 317,440 + 3*(317,440 + 92,160) = 1,546,240
    assert fl.upt_step_flops(TINY, group_size=8, seq_len_on=10, n_on=8, n_off=1, seq_len_off=20) == 1_546_240
    # A group with no correct rollout trains only on the expert trajectory: 317,440 + 3*92,160
    assert fl.upt_step_flops(TINY, group_size=8, seq_len_on=10, n_on=0, n_off=1, seq_len_off=20) == 593_920


def test_negative_inputs_are_refused_with_the_name():
    with pytest.raises(UserError, match="train_batch"):
        fl.dapo_step_flops(TINY, gen_batch=1, rounds=1, group_size=8, train_batch=-1, seq_len=10)
    with pytest.raises(UserError, match="seq_len"):
        fl.forward_flops_per_token(TINY, float("nan"))


# (e) reading configs ----------------------------------------------------------------------------


def test_from_hf_config_object_and_dict_agree():
    from transformers import Qwen2Config

    preset = get_preset("Qwen2.5-7B")
    config = Qwen2Config(**{k: v for k, v in preset.items() if k not in ("architectures", "model_type")})
    assert fl.ModelShape.from_hf_config(config) == fl.ModelShape.from_hf_config(preset) == qwen7b()
    assert qwen7b().kv_dim == 4 * 128


def test_from_hf_config_head_dim_and_kv_heads():
    # An explicit head_dim wins over hidden_size // heads: 2 KV heads * 256 = 512.
    assert fl.ModelShape.from_hf_config({**TINY_CONFIG, "head_dim": 256, "num_key_value_heads": 2}).kv_dim == 512
    # No num_key_value_heads: plain multi-head attention, 2 heads * 4 = 8.
    no_kv = {k: v for k, v in TINY_CONFIG.items() if k != "num_key_value_heads"}
    assert fl.ModelShape.from_hf_config(no_kv).kv_dim == 8
    llama = fl.ModelShape.from_hf_config(get_preset("meta-llama/Llama-3.2-3B"))
    assert llama == fl.ModelShape(28, 3072, 8192, 128256, 8 * 128)
    assert fl.ModelShape.from_hf_config(get_preset("qwen2.5-0.5b")).kv_dim == 2 * 64


def test_from_hf_config_reads_folder_and_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY_CONFIG))
    assert fl.ModelShape.from_hf_config(tmp_path) == TINY
    assert fl.ModelShape.from_hf_config(str(tmp_path / "config.json")) == TINY
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="bad/config.json"):
        fl.ModelShape.from_hf_config(tmp_path / "bad")
    with pytest.raises(UserError, match="not found"):
        fl.ModelShape.from_hf_config(tmp_path / "missing")


def test_from_hf_config_errors_name_the_field():
    lacking = {k: v for k, v in TINY_CONFIG.items() if k != "intermediate_size"}
    with pytest.raises(UserError, match="missing field 'intermediate_size'"):
        fl.ModelShape.from_hf_config(lacking)
    with pytest.raises(UserError, match="'vocab_size' must be a positive integer"):
        fl.ModelShape.from_hf_config({**TINY_CONFIG, "vocab_size": 0})
    with pytest.raises(UserError, match="num_local_experts=8"):
        fl.ModelShape.from_hf_config({**TINY_CONFIG, "num_local_experts": 8})


def test_unknown_preset_lists_the_names():
    with pytest.raises(UserError, match="Qwen2.5-7B.*Llama-3.2-3B"):
        get_preset("gpt-5")


# MFU -------------------------------------------------------------------------------------------


def test_mfu_and_chip_peaks():
    assert fl.mfu(1e15, 2.0, 1e15) == 0.5
    # one table, the device layer's: 910B3 313 TFLOP/s, H100 SXM 989.4, H200 989.4 (bf16 dense)
    assert fl.peak_flops_for_chip("Ascend910B3") == 313e12
    assert fl.peak_flops_for_chip("NVIDIA H100 80GB HBM3") == pytest.approx(989.4e12)
    assert fl.peak_flops_for_chip("NVIDIA H200") == pytest.approx(989.4e12)
    with pytest.raises(UserError, match="known chips: H100-SXM"):
        fl.peak_flops_for_chip("tpu-v5")
    with pytest.raises(UserError, match="seconds must be > 0"):
        fl.mfu(1.0, 0.0, 1.0)


# (f) the CLI -----------------------------------------------------------------------------------


def test_cli_table4_json(capsys):
    assert main(["flops", "--table4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "Qwen2.5-7B"
    rows = {(r["dataset"], r["step"]): r for r in result["rows"]}
    assert len(rows) == 32
    for name, by_step in PAPER_TABLE4.items():
        for step, paper in by_step.items():
            assert rows[(name, step)]["paper_exaflops"] == paper
            assert abs(rows[(name, step)]["exaflops"] - paper) <= table4_tolerance(paper)
    sft889k = result["datasets"]["SFT889K"]
    assert sft889k["forward_flops_per_token"] == QWEN7B_F_SFT889K
    assert sft889k["step_flops"] == pytest.approx(3 * 512 * 3771 * QWEN7B_F_SFT889K, rel=1e-12)
    assert result["datasets"]["S1K"]["batch_size"] == 16


def test_cli_phase_json_with_mfu(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(TINY_CONFIG))
    argv = ["flops", "--model", str(tmp_path), "--phase", "grpo", "--batch", "64", "--group-size", "8",
            "--seq-len", "10", "--steps", "3", "--checkpoints", "1,2", "--chip", "A100", "--num-chips", "2",
            "--step-seconds", "0.5", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["step_flops"] == 81_264_640
    assert result["per_token"] == [{"seq_len": 10.0, "forward_flops": 3968.0, "train_flops": 11904.0}]
    assert result["total_exaflops"] == pytest.approx(3 * 81_264_640 / 1e18)
    assert [c["step"] for c in result["checkpoints"]] == [1, 2]
    assert result["checkpoints"][1]["exaflops"] == pytest.approx(2 * 81_264_640 / 1e18)
    # 81,264,640 FLOPs in 0.5 s on 2 chips of 312 TFLOP/s
    assert result["mfu"]["mfu"] == pytest.approx(81_264_640 / (0.5 * 2 * 312e12))


def test_cli_sft_from_retu_dataset(capsys):
    assert main(["flops", "--model", "Qwen2.5-7B", "--phase", "sft", "--dataset", "Hard102K",
                 "--steps", "1800", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["inputs"] == {"batch_size": 512, "mean_len": 8633}
    assert abs(result["total_exaflops"] - 446.3) <= table4_tolerance(446.3)


def test_cli_errors_name_the_option(capsys):
    assert main(["flops", "--model", "Qwen2.5-7B", "--phase", "dapo", "--gen-batch", "128"]) == 2
    assert "--rounds, --group-size, --train-batch, --seq-len" in capsys.readouterr().err
    assert main(["flops", "--model", "Qwen2.5-7B", "--phase", "sft", "--dataset", "S1K", "--seq-len", "5"]) == 2
    assert "does not use --seq-len" in capsys.readouterr().err
    assert main(["flops", "--model", "no-such-model", "--phase", "sft"]) == 2
    assert "neither a preset" in capsys.readouterr().err
