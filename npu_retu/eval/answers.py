"""Answers for difficulty labelling: sample K answers per problem from model folders, as the paper
samples DeepSeek-R1-Distill models' answers to get win rates (Appendix B.1, Table 3).

    sample_answers("rl.jsonl", ["embedded:base", "runs/sft/checkpoint-200"], "answers.jsonl", k=4)

The file is what ``npu-retu data difficulty --answers`` reads (npu_retu.data.curate.read_answers).
"""

from __future__ import annotations

from pathlib import Path

from npu_retu.data.curate import check_outputs, problem_text
from npu_retu.data.readers import data_files, read_rows
from npu_retu.data.schemas import rl_example_from_row
from npu_retu.data.synthetic import write_jsonl
from npu_retu.errors import UserError


def sample_answers(
    source: str,
    models: list[str],
    out: str | Path,
    *,
    k: int = 2,
    limit: int | None = None,
    max_new_tokens: int = 256,
    temperature: float = 0.7,
    seed: int = 0,
    batch_size: int = 64,
) -> int:
    """Sample ``k`` answers per problem of ``source`` (its first ``limit`` rows) from each model folder
    (``embedded:base``, an SFT checkpoint) with the transformers rollout engine and write an answers
    file for :func:`~npu_retu.data.curate.label_difficulty`; returns the number of answers written."""
    from npu_retu.data.tokenize import tokenize_prompt
    from npu_retu.models import embedded
    from npu_retu.models.modeling import load_model, load_tokenizer, resolve_path
    from npu_retu.rollout import TransformersRollout
    from npu_retu.rollout.base import SamplingParams

    files = data_files(str(resolve_path(source)) if embedded.is_embedded(source) else source)
    check_outputs(out, None, files)
    if Path(out).suffix.lower() != ".jsonl":
        raise UserError(f"--out {out}: an answers file is .jsonl")
    prompts, texts = [], []
    for file in files:
        for row, record in read_rows(file):
            if limit is not None and len(prompts) >= limit:
                break
            prompts.append(rl_example_from_row(record, file, row).prompt)
            texts.append(problem_text(record, file, row))
    rows = []
    for model_name in models:
        tokenizer = load_tokenizer(model_name)
        rollout = TransformersRollout(load_model(model_name), tokenizer, batch_size=batch_size)
        params = SamplingParams(n=k, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
        for trajectory in rollout.generate([tokenize_prompt(p, tokenizer) for p in prompts], params):
            rows.append({"problem": texts[trajectory.prompt_index], "model": model_name, "response": trajectory.text})
    write_jsonl(out, rows)
    return len(rows)
