"""The transformers rollout engine against Hugging Face ``generate`` and teacher-forced log-probs.

Runs the quick 60-step base model (tests/conftest.py) on a few held-out prompts of different lengths.
The model is weak (its greedy answers ramble), which is fine: these tests check the sampling
mechanics token for token, not answer quality.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from npu_retu.models import embedded
from npu_retu.data.schemas import load_rl
from npu_retu.data.tokenize import tokenize_prompt
from npu_retu.models.modeling import load_model, load_tokenizer
from npu_retu.rollout import (
    ENGINE_CHOICES,
    RolloutEngine,
    SamplingParams,
    TransformersRollout,
    sample_next_tokens,
    top_p_filter,
)

MAX_NEW = 24


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(embedded.resolve("embedded:base")))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return load_model(str(embedded.resolve("embedded:base")))


@pytest.fixture(scope="module")
def prompts(tokenizer):
    rows = load_rl(embedded.resolve("embedded:rl-test"))
    encoded = [tokenize_prompt(row.prompt, tokenizer) for row in rows[:40]]
    # distinct lengths, so left padding really differs between rows of a batch
    by_length = {}
    for ids in encoded:
        by_length.setdefault(len(ids), ids)
    chosen = [by_length[length] for length in sorted(by_length)]
    picked = chosen[:: max(1, len(chosen) // 5)][:5]
    assert len({len(p) for p in picked}) == 5
    return picked


@pytest.fixture(scope="module")
def rollout(model, tokenizer):
    return TransformersRollout(model, tokenizer, batch_size=8)


@pytest.fixture(scope="module")
def greedy(rollout, prompts):
    return rollout.generate(prompts, SamplingParams(temperature=0, max_new_tokens=MAX_NEW))


def hf_greedy(model, prompt, max_new_tokens):
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens)
    return out[0, len(prompt) :].tolist()


def teacher_forced_logprobs(model, prompt, response, temperature):
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    scaled = logits[len(prompt) - 1 : len(prompt) - 1 + len(response)] / temperature
    return F.log_softmax(scaled, dim=-1).gather(-1, torch.tensor(response)[:, None]).squeeze(-1)


# ------------------------------------------------------------------------------------------------
# sampling parameters and the sampler


@pytest.mark.parametrize(
    "kwargs",
    [dict(n=0), dict(temperature=-0.1), dict(temperature=float("nan")), dict(top_p=0.0), dict(top_p=1.5),
     dict(max_new_tokens=0), dict(stop="</answer>"), dict(stop=[""]), dict(seed=1.5), dict(n=True)],
)
def test_sampling_params_reject_bad_values(kwargs):
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)


def test_sampling_params_defaults():
    params = SamplingParams()
    assert (params.n, params.temperature, params.top_p, params.stop, params.seed) == (1, 0.7, 1.0, [], None)
    assert SamplingParams(temperature=0).greedy and not params.greedy


def test_top_p_filter_hand_values():
    probs = torch.tensor([[0.2, 0.5, 0.3]])
    # top-p 0.6: 0.5 alone is short of 0.6, 0.5 + 0.3 reaches it -> {0.5, 0.3} renormalised
    assert torch.allclose(top_p_filter(probs, 0.6), torch.tensor([[0.0, 0.625, 0.375]]))
    assert torch.allclose(top_p_filter(probs, 0.5), torch.tensor([[0.0, 1.0, 0.0]]))  # 0.5 reaches 0.5
    assert torch.allclose(top_p_filter(probs, 0.81), probs)
    assert torch.allclose(top_p_filter(probs, 1e-6), torch.tensor([[0.0, 1.0, 0.0]]))


def test_sampler_reports_untruncated_logprobs_at_temperature():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(64, 1)
    generator = torch.Generator().manual_seed(0)
    tokens, logprobs = sample_next_tokens(logits, SamplingParams(temperature=0.5, top_p=0.8), generator)
    expected = F.log_softmax(logits / 0.5, dim=-1).gather(-1, tokens[:, None]).squeeze(-1)
    assert torch.allclose(logprobs, expected)
    # softmax([4, 2, 0, -2]) = [.867, .117, ...]: top-p 0.8 keeps only the first token
    assert set(tokens.tolist()) == {0}
    tokens, logprobs = sample_next_tokens(logits, SamplingParams(temperature=0))
    assert tokens.tolist() == [0] * 64
    assert torch.allclose(logprobs, F.log_softmax(logits, dim=-1)[:, 0])


# ------------------------------------------------------------------------------------------------
# against Hugging Face generate and teacher forcing


def test_greedy_equals_hf_generate_token_for_token(model, prompts, greedy):
    for prompt, trajectory in zip(prompts, greedy):
        assert trajectory.prompt_ids == prompt
        assert trajectory.response_ids == hf_greedy(model, prompt, MAX_NEW)


def test_left_padding_does_not_change_results(rollout, model, tokenizer, prompts, greedy):
    one_by_one = TransformersRollout(model, tokenizer, batch_size=1)
    single = one_by_one.generate(prompts, SamplingParams(temperature=0, max_new_tokens=MAX_NEW))
    assert [t.response_ids for t in single] == [t.response_ids for t in greedy]
    for a, b in zip(single, greedy):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


def test_greedy_logprobs_are_log_softmax_of_logits(model, prompts, greedy):
    for prompt, trajectory in zip(prompts, greedy):
        expected = teacher_forced_logprobs(model, prompt, trajectory.response_ids, 1.0)
        assert torch.allclose(torch.tensor(trajectory.logprobs), expected, atol=1e-4)


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_sampled_logprobs_equal_teacher_forced_recomputation(rollout, model, prompts, top_p):
    temperature = 0.7
    trajectories = rollout.generate(prompts, SamplingParams(n=2, temperature=temperature, top_p=top_p,
                                                            max_new_tokens=MAX_NEW, seed=11))
    assert len(trajectories) == 2 * len(prompts)
    for trajectory in trajectories:
        expected = teacher_forced_logprobs(model, trajectory.prompt_ids, trajectory.response_ids, temperature)
        assert len(trajectory.logprobs) == len(trajectory.response_ids)
        assert (torch.tensor(trajectory.logprobs) - expected).abs().max().item() < 1e-4


# ------------------------------------------------------------------------------------------------
# seeds, top-p, ordering, lengths


def test_same_seed_same_samples_other_seed_other_samples(rollout, prompts):
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=MAX_NEW, seed=3)
    first = rollout.generate(prompts, params)
    again = rollout.generate(prompts, params)
    other = rollout.generate(prompts, SamplingParams(n=2, temperature=1.0, max_new_tokens=MAX_NEW, seed=4))
    assert [t.response_ids for t in first] == [t.response_ids for t in again]
    assert [t.logprobs for t in first] == [t.logprobs for t in again]
    assert [t.response_ids for t in first] != [t.response_ids for t in other]


def test_tiny_top_p_is_greedy(rollout, prompts, greedy):
    nucleus = rollout.generate(prompts, SamplingParams(temperature=1.0, top_p=1e-6, max_new_tokens=MAX_NEW, seed=5))
    assert [t.response_ids for t in nucleus] == [t.response_ids for t in greedy]


def test_n_samples_are_ordered_prompt_major(rollout, prompts):
    trajectories = rollout.generate(prompts[:3], SamplingParams(n=4, temperature=1.0, max_new_tokens=8, seed=0))
    assert [(t.prompt_index, t.sample_index) for t in trajectories] == [(p, s) for p in range(3) for s in range(4)]
    assert all(t.prompt_ids == prompts[t.prompt_index] for t in trajectories)
    # samples of one prompt differ (temperature 1 on a weak model)
    assert len({tuple(t.response_ids) for t in trajectories[:4]}) > 1


def test_max_new_tokens_cut_is_length(rollout, prompts, greedy, tokenizer):
    cut = rollout.generate(prompts, SamplingParams(temperature=0, max_new_tokens=5))
    for short, full in zip(cut, greedy):
        assert short.finish_reason == "length"
        assert short.response_ids == full.response_ids[:5]
        assert short.text == tokenizer.decode(full.response_ids[:5], skip_special_tokens=True)
    assert rollout.last_stats.response_tokens == 5 * len(prompts)
    assert rollout.last_stats.prompt_tokens == sum(len(p) for p in prompts)
    assert rollout.last_stats.num_sequences == len(prompts) and rollout.last_stats.tokens_per_second > 0


def test_eos_is_kept_in_ids_not_in_text_and_rows_finish_apart(model, tokenizer, prompts, greedy):
    # The quick base model never closes its turn within a few tokens; declare a token it does emit as
    # the end-of-sequence so that rows of one batch finish at different steps.
    eos = greedy[0].response_ids[3]
    expected = []
    for full in greedy:
        ids = full.response_ids
        expected.append(ids[: ids.index(eos) + 1] if eos in ids else ids)
    assert len({len(ids) for ids in expected}) > 1, "rows should finish at different steps"
    for batch_size in (8, 1):
        engine = TransformersRollout(model, tokenizer, batch_size=batch_size, eos_token_ids=[eos])
        trajectories = engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=MAX_NEW))
        assert [t.response_ids for t in trajectories] == expected
        for trajectory, ids in zip(trajectories, expected):
            stopped = ids[-1] == eos
            assert trajectory.finish_reason == ("stop" if stopped else "length")
            text_ids = ids[:-1] if stopped else ids
            assert trajectory.text == tokenizer.decode(text_ids, skip_special_tokens=True)


def test_default_eos_ids_come_from_the_generation_config(rollout, tokenizer):
    assert sorted(rollout.eos_token_ids) == sorted(tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"]))


def test_stop_strings_cut_text_and_stop(rollout, tokenizer, prompts, greedy):
    text = tokenizer.decode(greedy[0].response_ids, skip_special_tokens=True)
    stop = text[6:9]  # a string the first greedy response certainly contains
    other = "\u2603 never"
    trajectories = rollout.generate(prompts, SamplingParams(temperature=0, max_new_tokens=MAX_NEW, stop=[other, stop]))
    assert trajectories[0].finish_reason == "stop" and len(trajectories[0].response_ids) < MAX_NEW
    for trajectory, full in zip(trajectories, greedy):
        full_text = tokenizer.decode(full.response_ids, skip_special_tokens=True)
        if stop not in full_text:
            assert trajectory.response_ids == full.response_ids and trajectory.finish_reason == "length"
            continue
        # the shortest prefix of the greedy tokens whose text holds the stop string
        end = next(i for i in range(1, len(full.response_ids) + 1)
                   if stop in tokenizer.decode(full.response_ids[:i], skip_special_tokens=True))
        assert trajectory.response_ids == full.response_ids[:end]
        assert trajectory.finish_reason == "stop"
        assert trajectory.text == full_text[: full_text.index(stop)]
        assert len(trajectory.logprobs) == end


# ------------------------------------------------------------------------------------------------
# engine behaviour


def test_generation_restores_train_mode_and_builds_no_graph(rollout, model, prompts):
    model.train()
    try:
        rollout.generate(prompts[:2], SamplingParams(n=2, max_new_tokens=4, seed=0))
        assert model.training
        assert all(p.grad is None for p in model.parameters())
        model.eval()
        rollout.generate(prompts[:2], SamplingParams(max_new_tokens=4, seed=0))
        assert not model.training
    finally:
        model.eval()


def test_sync_weights_from_module_and_state_dict(model, tokenizer, prompts, greedy):
    stale = embedded.build_model(tokenizer, seed=123)  # same shape, other weights
    engine = TransformersRollout(stale, tokenizer, batch_size=8)
    params = SamplingParams(temperature=0, max_new_tokens=MAX_NEW)
    assert [t.response_ids for t in engine.generate(prompts, params)] != [t.response_ids for t in greedy]

    engine.sync_weights(model)
    assert [t.response_ids for t in engine.generate(prompts, params)] == [t.response_ids for t in greedy]
    assert engine.model is stale  # weights copied in, the rollout keeps its own module

    # a state dict without the tied LM head (as safetensors stores tied weights) loads too
    engine.sync_weights(embedded.build_model(tokenizer, seed=123))
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    engine.sync_weights(state)
    assert [t.response_ids for t in engine.generate(prompts, params)] == [t.response_ids for t in greedy]

    with pytest.raises(ValueError, match="unexpected keys"):
        engine.sync_weights({**state, "not.a.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="missing keys"):
        engine.sync_weights({k: v for k, v in state.items() if k != "model.norm.weight"})


def test_shared_module_sync_is_a_no_op(rollout, model):
    before = copy.deepcopy(model.state_dict())
    rollout.sync_weights(model)
    assert rollout.model is model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_protocol_and_registry(rollout):
    assert isinstance(rollout, RolloutEngine)
    assert ENGINE_CHOICES == ("auto", "transformers", "vllm")
    assert rollout.supports_sleep is False
    rollout.sleep()
    rollout.wake()


def test_empty_prompt_is_an_error(rollout):
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        rollout.generate([[1, 2], []], SamplingParams())
