import math

import pytest
import torch

from npu_retu.algos import NextTokenNLL, build_loss
from npu_retu.config import OptimConfig
from npu_retu.engine.local import LocalEngine, lr_multiplier


def tiny_model(seed=0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return Qwen2ForCausalLM(cfg)


def batch(ids, n_prompt):
    ids = torch.tensor(ids)
    labels = ids.clone()
    labels[:, :n_prompt] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def test_lr_schedule_hand_values():
    kw = dict(warmup_steps=4, total_steps=14, min_lr_ratio=0.1)
    assert [lr_multiplier(s, schedule="cosine", **kw) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_multiplier(4, schedule="cosine", **kw) == pytest.approx(1.0)
    # halfway through the decay: 0.1 + 0.9 * 0.5 * (1 + cos(pi/2)) = 0.55
    assert lr_multiplier(9, schedule="cosine", **kw) == pytest.approx(0.55)
    assert lr_multiplier(14, schedule="cosine", **kw) == pytest.approx(0.1)
    assert lr_multiplier(9, schedule="linear", **kw) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_multiplier(9, schedule="constant", **kw) == 1.0


def forward_backward(eng, loss_fn, micro_batch, num_loss_tokens):
    """What the SFT trainer does per micro-batch: the registered loss, divided by the step's tokens."""
    loss_sum, metrics = loss_fn(eng.module, micro_batch)
    eng.backward(loss_sum / num_loss_tokens)
    return float(loss_sum.detach()), metrics["tokens"]


def test_nll_loss_sum_matches_hand_cross_entropy():
    model = tiny_model()
    assert isinstance(build_loss("nll"), NextTokenNLL)
    b = batch([[1, 2, 3, 4, 5]], n_prompt=2)
    loss_sum, metrics = build_loss("nll")(model, b)
    n = metrics["tokens"]
    logits = model(input_ids=b["input_ids"]).logits[0]
    logp = torch.log_softmax(logits.double(), -1)
    # targets 3, 4, 5 are predicted from positions 1, 2, 3 (token 3 is the first label)
    expected = -(logp[1, 3] + logp[2, 4] + logp[3, 5])
    assert n == 3
    assert float(loss_sum.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)


def test_gradient_accumulation_equals_one_big_batch():
    rows = [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12], [3, 3, 4, 4, 5, 5], [9, 8, 7, 6, 5, 4]]
    big = batch(rows, n_prompt=2)
    big["labels"][1, 2:4] = -100  # uneven token counts per row: a per-micro-batch mean would differ
    grads = []
    for split in (1, 2, 4):
        model = tiny_model()
        eng = LocalEngine(model, OptimConfig(lr=1e-3), 10, torch.device("cpu"))
        n_tokens = int((big["labels"][:, 1:] != -100).sum())
        size = 4 // split
        for i in range(0, 4, size):
            forward_backward(eng, NextTokenNLL(), {k: v[i : i + size] for k, v in big.items()}, n_tokens)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grads[0], grads[2], rtol=1e-5, atol=1e-7)


def test_step_clips_and_reports_norm():
    model = tiny_model()
    eng = LocalEngine(model, OptimConfig(lr=1e-3, max_grad_norm=1e-3, warmup_steps=0, schedule="constant"), 10, torch.device("cpu"))
    b = batch([[1, 2, 3, 4, 5]], n_prompt=1)
    forward_backward(eng, NextTokenNLL(), b, 4)
    before = math.sqrt(sum(float(p.grad.norm()) ** 2 for p in model.parameters() if p.grad is not None))
    stats = eng.step()
    assert stats["grad_norm"] == pytest.approx(before, rel=1e-4)
    assert stats["lr"] == 1e-3
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_fused_sft_loss_equals_the_full_logits_loss(packed):
    """sft.kernels=reference: the label tokens' log-probs from the fused kernel (no B x S x V logits)
    give the loss and the gradients of the plain path, for a padded and a packed batch."""
    if packed:  # two documents in one row: positions restart, the boundary token is not a label
        ids = torch.tensor([[5, 6, 7, 8, 9, 11, 12, 13, 14, 15]])
        b = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "position_ids": torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4]]),
             "labels": torch.tensor([[-100, -100, 7, 8, 9, -100, -100, 13, 14, 15]])}
    else:
        b = batch([[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 0, 0]], n_prompt=2)
        b["attention_mask"][1, 4:] = 0
        b["labels"][1, 4:] = -100
    results = {}
    for kernels in ("unfused", "reference"):
        model = tiny_model()
        loss_sum, metrics = NextTokenNLL(kernels=kernels)(model, b)
        n = metrics["tokens"]
        loss_sum.backward()
        results[kernels] = (float(loss_sum.detach()), n, [p.grad.clone() for p in model.parameters()])
    (want, want_n, want_grads), (got, got_n, got_grads) = results["unfused"], results["reference"]
    assert got_n == want_n == 6
    assert got == pytest.approx(want, rel=1e-5)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_fused_sft_loss_is_refused_with_zero3():
    from npu_retu.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="sft.kernels"):
        load_config(None, ["sft.kernels=auto", "engine.name=deepspeed", "engine.zero_stage=3"])
    load_config(None, ["sft.kernels=auto", "engine.name=deepspeed", "engine.zero_stage=2"])


def test_fused_path_refuses_logits_that_are_not_hidden_times_head():
    """A model whose config soft-caps its logits (Gemma 2) is refused by the fused paths with a
    message naming the setting (the check reads the config off the decoder, which shares it)."""
    from npu_retu.algos.logprobs import hidden_states_and_head

    model = tiny_model()
    model.config.final_logit_softcapping = 30.0
    b = batch([[1, 2, 3, 4, 5]], n_prompt=2)
    with pytest.raises(ValueError, match="final_logit_softcapping.*kernels=unfused"):
        hidden_states_and_head(model, b["input_ids"], b["attention_mask"])
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        NextTokenNLL(kernels="reference")(model, b)
    NextTokenNLL(kernels="unfused")(model, b)  # the plain path runs it through its own forward
