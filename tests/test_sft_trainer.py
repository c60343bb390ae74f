"""One short SFT run on the embedded default: the run folder holds what the README promises."""

import json
import math

import pytest

from npu_retu.config import load_config


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    from npu_retu.trainer.sft import train_sft

    out = tmp_path_factory.mktemp("sft")
    cfg = load_config(
        None,
        [
            f"run.output_dir={out}",
            "run.name=short",
            "run.progress=false",
            "data.train_files=[embedded:sft-uniform-1k]",
            "data.val_files=[embedded:sft-val]",
            "sft.global_batch_size=8",
            "sft.micro_batch_size=4",
            "sft.max_steps=6",
            "sft.eval_every=2",
            "sft.save_every=2",
            "sft.optim.lr=1e-3",
            "monitor.stop_on_decision=false",
        ],
    )
    return cfg, train_sft(cfg, quiet=True)


def test_metrics_carry_step_cumulative_flops_and_every_metric(sft_run):
    from transformers import AutoConfig

    from npu_retu.flops import ModelShape, forward_flops_per_token

    cfg, result = sft_run
    rows = [json.loads(l) for l in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "train/loss" in r]
    val = [r for r in rows if "val/loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in val] == [2, 4, 6]
    for r in train:
        for key in ("train/lr", "train/grad_norm", "train/tokens", "train/tokens_per_s", "train/step_flops"):
            assert key in r and math.isfinite(r[key])
    # cumulative FLOPs = running sum of Appendix C step FLOPs (3 x forward, Eq. 21)
    running = 0.0
    for r in train:
        running += r["train/step_flops"]
        assert r["flops"] == pytest.approx(running, rel=1e-12)
    shape = ModelShape.from_hf_config(AutoConfig.from_pretrained(result.picked_checkpoint or result.run_dir / "checkpoints/step-000006"))
    # a step's FLOPs cannot be below 3 x tokens x the dense forward cost
    dense = 2 * (shape.num_layers * (3 * shape.hidden_size * shape.intermediate_size + 2 * shape.hidden_size * (shape.hidden_size + shape.kv_dim)) + 2 * shape.vocab_size * shape.hidden_size)
    assert train[0]["train/step_flops"] >= 3 * train[0]["train/tokens"] * dense
    # and not above it with the attention term at the longest allowed sequence (Eq. 19)
    assert train[0]["train/step_flops"] <= 3 * train[0]["train/tokens"] * forward_flops_per_token(shape, cfg.data.max_length)
    assert result.flops == pytest.approx(train[-1]["flops"])
    assert any((result.run_dir / "tensorboard").iterdir())
    assert {r["monitor/phase"] for r in val} <= {"adaptive", "stable", "mild", "severe"}


def test_checkpoints_load_with_from_pretrained(sft_run):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg, result = sft_run
    ckpts = sorted((result.run_dir / "checkpoints").iterdir())
    assert [p.name for p in ckpts] == ["step-000002", "step-000004", "step-000006"]
    last = ckpts[-1]
    for name in ("model.safetensors", "config.json", "trainer_state.pt", "tokenizer_config.json"):
        assert (last / name).is_file(), name
    model = AutoModelForCausalLM.from_pretrained(last)
    tokenizer = AutoTokenizer.from_pretrained(last)
    ids = tokenizer("Start with 3.", return_tensors="pt")["input_ids"]
    assert torch.isfinite(model(ids).logits).all()
    state = torch.load(last / "trainer_state.pt", weights_only=False)
    assert state["step"] == 6 and state["flops"] == pytest.approx(result.flops)
    assert set(state) >= {"engine", "batcher", "monitor", "rng"}


def test_phase_report_and_plot_are_written(sft_run):
    cfg, result = sft_run
    report = json.loads((result.run_dir / "phases.json").read_text())
    assert report["pick"] == result.picked_step
    assert len(report["losses"]) == 3
    png = (result.run_dir / "phases.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert (result.run_dir / "config.yaml").is_file()


def test_existing_run_folder_needs_resume_or_overwrite(sft_run):
    from npu_retu.errors import UserError
    from npu_retu.trainer.sft import train_sft

    cfg, _ = sft_run
    with pytest.raises(UserError, match="already exists; pass --resume"):
        train_sft(cfg, quiet=True)
