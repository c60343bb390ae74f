"""The embedded default: tokenizer, tiny model config, data sets and the cache resolver."""

import json
import threading

import pytest

from npu_retu import embedded
from npu_retu.data import synthetic
from npu_retu.errors import UserError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NPU_RETU_CACHE", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("tok")
    corpus = embedded._tokenizer_corpus()[:1500]
    embedded.build_tokenizer(out, corpus)
    return AutoTokenizer.from_pretrained(out)


def test_tokenizer_round_trips_any_utf8_and_splits_digits(tokenizer):
    texts = [
        "Janet’s ducks lay 16 eggs per day. She sells the remainder for $2 per egg.",
        r"Find $\frac{5^{3}}{16}$ and write \boxed{\dfrac{1}{2}} — or 中文, émoji 🎲.",
        "<think>\nAdd 5: 7 + 5 = 12, keep 2.\n</think>\n\nThe result is \\boxed{2}.",
    ]
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
    pieces = tokenizer.convert_ids_to_tokens(tokenizer("12345", add_special_tokens=False)["input_ids"])
    assert pieces == ["1", "2", "3", "4", "5"]
    think = tokenizer("<think>x</think>", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_tokens_to_ids("<think>") == think[0]
    assert tokenizer.decode(think, skip_special_tokens=True) == "<think>x</think>"  # kept on decode


def test_chat_template_is_chatml(tokenizer):
    messages = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n"
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"


def test_tiny_model_is_a_qwen2_that_round_trips(tokenizer, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = embedded.tiny_model_config(tokenizer)
    assert isinstance(cfg, Qwen2Config)
    assert cfg.vocab_size % 64 == 0 and cfg.vocab_size >= len(tokenizer)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in cfg.eos_token_id
    model = embedded.build_model(tokenizer, seed=0)
    again = embedded.build_model(tokenizer, seed=0)
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)  # same seed, same weights
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(model(ids).logits, loaded(ids).logits)


def test_data_sets_are_deterministic_disjoint_and_in_the_real_shapes(cache):
    val = embedded.resolve("embedded:sft-val")
    test = embedded.resolve("embedded:rl-test")
    train = embedded.resolve("embedded:sft-easy-300")
    first = train.read_bytes()
    train.unlink()
    assert embedded.resolve("embedded:sft-easy-300").read_bytes() == first  # same bytes when rebuilt
    rows = [json.loads(l) for l in train.read_text().splitlines()]
    assert len(rows) == 300
    user = rows[0]["messages"][0]
    assert user["info"]["source"] == "npu-retu-synthetic" and user["info"]["reference_answer"].isdigit()
    lo, hi = synthetic.DIFFICULTY_STEPS["easy"]
    assert all(lo <= r["messages"][0]["info"]["difficulty"] <= hi for r in rows)
    val_rows = [json.loads(l) for l in val.read_text().splitlines()]
    test_rows = [json.loads(l) for l in test.read_text().splitlines()]
    assert len(val_rows) == 199 and len(test_rows) == 500
    assert json.loads(test_rows[0]["reward_model"]["ground_truth"])[0].isdigit()
    held_out = {r["messages"][0]["content"] for r in val_rows} | {r["prompt"][0]["content"] for r in test_rows}
    # identities, not wording: recompute keys from the held-out problems
    keys = embedded.held_out_keys()
    assert len(keys) == 699
    train_keys = {p.key for p in synthetic.generate_problems(300, "easy", embedded.SEEDS["sft-easy"], exclude=keys)}
    assert not train_keys & keys
    assert not {r["messages"][0]["content"] for r in rows} & held_out


def test_resolver_names_and_errors(cache):
    assert embedded.is_embedded("embedded:base") and not embedded.is_embedded("data/x.jsonl")
    assert embedded.parse_size("2k") == 2000 and embedded.parse_size("250") == 250
    with pytest.raises(UserError, match="unknown embedded name 'embedded:sft-medium-2k'"):
        embedded.resolve("embedded:sft-medium-2k")
    with pytest.raises(UserError, match="not valid"):
        embedded.resolve("embedded:sft-easy-0")


def test_resolver_ignores_leftovers_and_builds_once_under_concurrency(cache, monkeypatch):
    root = embedded.cache_root()
    root.mkdir(parents=True)
    (root / ".tmp-sft-val.jsonl-dead").mkdir()  # a build killed earlier
    calls = []
    real = embedded._build_sft_val

    def counting(out):
        calls.append(1)
        real(out)

    monkeypatch.setattr(embedded, "_build_sft_val", counting)
    results = []
    threads = [threading.Thread(target=lambda: results.append(embedded.resolve("embedded:sft-val"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len(set(results)) == 1 and results[0].is_file()
    assert len(results[0].read_text().splitlines()) == 199


def test_base_steps_override_is_cached_apart(cache, monkeypatch):
    monkeypatch.setenv("NPU_RETU_BASE_STEPS", "7")
    assert embedded._artifact("base")[0] == "base-7steps"
    monkeypatch.setenv("NPU_RETU_BASE_STEPS", str(embedded.PRETRAIN_STEPS))
    assert embedded._artifact("base")[0] == "base"
    monkeypatch.setenv("NPU_RETU_BASE_STEPS", "x")
    with pytest.raises(UserError, match="NPU_RETU_BASE_STEPS"):
        embedded._artifact("base")
