"""One rank of a data-parallel RL update on fixed rollouts (run by tests/test_distributed_rl.py).

    RANK=.. WORLD_SIZE=.. MASTER_ADDR=.. MASTER_PORT=.. python tests/rl_update_rank.py OUT ENGINE

Builds a tiny random Qwen2 model and fixed groups of rollouts (the same on every rank), runs two
policy updates, and rank 0 writes the final weights and the update metrics to OUT (torch.save).
"""

from __future__ import annotations

import random
import sys

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from npu_retu.algos import Group, advantages_of_group
from npu_retu.config import load_config
from npu_retu.device import Backend
from npu_retu.distributed import process_group as pg
from npu_retu.engine import build_engine
from npu_retu.rollout.base import Trajectory
from npu_retu.trainer.rl import Stopwatch, policy_update, rl_loss

VOCAB, N = 48, 4


def fixed_groups(seed: int, count: int, n: int = N) -> list[Group]:
    rng = random.Random(seed)
    groups = []
    for g in range(count):
        prompt = [rng.randrange(3, VOCAB) for _ in range(rng.randint(3, 6))]
        trajectories, rewards = [], []
        for j in range(n):
            response = [rng.randrange(3, VOCAB) for _ in range(rng.randint(2, 9))]
            logprobs = [-rng.uniform(0.5, 4.0) for _ in response]
            trajectories.append(Trajectory(g, j, prompt, response, "", logprobs, "stop"))
            rewards.append(float(j % 2 == g % 2 or j == 3))  # mixed rewards: non-zero advantages
        groups.append(Group(prompt_index=g, prompt_ids=prompt, trajectories=trajectories, rewards=rewards,
                            advantages=advantages_of_group(rewards)))  # Eq. 2, grpo with the std
    return groups


def main(out: str, engine_name: str) -> None:
    backend = Backend("cpu")
    ranks = pg.init_process_group(backend)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))
    cfg = load_config(None, [
        f"engine.name={engine_name}", "engine.zero_stage=2", "engine.fused_ops=false",
        f"rl.algo.n={N}", "rl.mini_batch_prompts=3", "rl.train_batch_prompts=3", "rl.micro_batch_size=2",
        "rl.kernels=reference", "rl.optim.lr=0.05", "rl.optim.max_grad_norm=0.5",
        # Adam eps above the gradients' float noise: with the default 1e-8 an entry whose gradient is ~1e-7
        # moves by a whole lr step whose sign is that noise; the weights then differ by more than the
        # update being checked
        "rl.optim.eps=1e-3",
    ])
    engine = build_engine(cfg, model, total_steps=4, backend=backend, world_size=ranks.world_size,
                          micro_batch_size=2, grad_accum_steps=2, optim=cfg.rl.optim)
    metrics = []
    # the second update has 2 sequences: at 3 ranks one rank trains on nothing and must still take part
    for step, kept in enumerate([fixed_groups(1, 3), fixed_groups(2, 1, n=2)]):
        row, _ = policy_update(engine, rl_loss(cfg.rl), kept, cfg.rl, Stopwatch(), pad_id=0, seed=step, ranks=ranks)
        metrics.append(row)
    if ranks.is_main:
        weights = {k: v.detach().float().cpu().clone() for k, v in engine.model.state_dict().items()}
        torch.save({"weights": weights, "metrics": metrics}, out)
    pg.barrier()
    pg.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
