"""One rank of a data-parallel LUFFY / SRFT / UPT update on fixed groups (run by tests/test_syn_losses.py).

    RANK=.. WORLD_SIZE=.. MASTER_ADDR=.. MASTER_PORT=.. python tests/syn_update_rank.py OUT [local|deepspeed]

For each algorithm: a tiny random Qwen2 model and fixed groups with expert trajectories (the same on
every rank), two policy updates (2 optimizer steps, then 1 on two sequences, or one, so that at 2
ranks a rank holds one or none), and rank 0 writes the all-reduced gradient of every optimizer step,
the update metrics and the final weights to OUT (torch.save). With ``deepspeed`` the engine is
DeepSpeed ZeRO-2 (no per-step gradients recorded; UPT without its skip, which needs the local
engine). test_syn_losses.py also imports it to compute the single-process result in its own process.
"""

from __future__ import annotations

import random
import sys

import torch

VOCAB, N = 48, 4


def overrides(algorithm: str, micro_batch_size: int = 2) -> list[str]:
    out = [
        f"rl.algorithm={algorithm}", f"rl.algo.n={N}", "rl.mini_batch_prompts=2", "rl.train_batch_prompts=4",
        "rl.gen_batch_prompts=4", f"rl.micro_batch_size={micro_batch_size}", "rl.kernels=reference",
        "rl.max_response_length=12", "rl.rollout.temperature=0.9", "rl.algo.entropy_coef=0.01",
        "rl.optim.lr=0.05", "rl.optim.max_grad_norm=0.5", "rl.optim.eps=1e-3", "engine.name=local",
    ]
    if algorithm == "upt":
        out.append("rl.algo.gate=1")
    return out


def tiny_model():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64))


def _trajectory(rng, g, j, prompt, expert=False):
    from npu_retu.rollout import Trajectory

    response = [rng.randrange(3, VOCAB) for _ in range(rng.randint(2, 10 if expert else 9))]
    logprobs = [] if expert else [-rng.uniform(0.5, 4.0) for _ in response]
    return Trajectory(g, j, prompt, response, "", logprobs, "stop", expert=expert)


def syn_groups(algorithm: str, seed: int = 1) -> list:
    """Four prompts' groups. LUFFY / SRFT: 3 rollouts + 1 expert each (mixed rewards, the expert
    sometimes wrong). UPT (gate 1): prompts 0 and 3 have at most 1 correct rollout (SFT on the expert),
    1 and 2 have 2 and 3 (RL on the 4 rollouts): 10 sequences."""
    from npu_retu.algos import gated_group, mixed_group

    rng = random.Random(seed)
    rollout_rewards = [[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]
    groups = []
    for g in range(4):
        prompt = [rng.randrange(3, VOCAB) for _ in range(rng.randint(3, 6))]
        expert = _trajectory(rng, g, N, prompt, expert=True)
        expert_reward = float(g != 2)
        if algorithm == "upt":
            rollouts = [_trajectory(rng, g, j, prompt) for j in range(N)]
            groups.append(gated_group(g, prompt, rollouts, expert, rollout_rewards[g], expert_reward, gate=1))
        else:
            rollouts = [_trajectory(rng, g, j, prompt) for j in range(N - 1)]
            groups.append(mixed_group(g, prompt, rollouts, [expert], rollout_rewards[g][: N - 1] + [expert_reward]))
    return groups


def small_groups(algorithm: str) -> list:
    """The second update: UPT one SFT group (one sequence: at 2 ranks one rank has none); LUFFY /
    SRFT one rollout (correct) + one expert."""
    from npu_retu.algos import gated_group, mixed_group

    rng = random.Random(5)
    prompt = [5, 9, 11]
    expert = _trajectory(rng, 0, 1, prompt, expert=True)
    if algorithm == "upt":
        return [gated_group(0, prompt, [_trajectory(rng, 0, j, prompt) for j in range(N)], expert, [0.0] * N, 1.0, gate=1)]
    return [mixed_group(0, prompt, [_trajectory(rng, 0, 0, prompt)], [expert], [1.0, 0.0])]


def recording_engine(cfg, model, world_size: int):
    """A LocalEngine that records the gradient summed over the ranks at every step, then steps."""
    from npu_retu.distributed.process_group import all_reduce_gradients
    from npu_retu.engine.local import LocalEngine

    class Recording(LocalEngine):
        grads: list

        def step(self, skip_above=None):
            params = list(self.model.parameters())
            all_reduce_gradients(params, self.world_size)
            self.grads.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().flatten().clone()
                                         for p in params]))
            world, self.world_size = self.world_size, 1  # (already summed)
            try:
                return super().step(skip_above)
            finally:
                self.world_size = world

    engine = Recording(model, cfg.rl.optim, total_steps=6, device=torch.device("cpu"), world_size=world_size)
    engine.grads = []
    return engine


def deepspeed_engine(cfg, model, world_size: int):
    """DeepSpeed ZeRO-2 on the CPU (gloo), with the update's micro-batch and accumulation settings."""
    from npu_retu.device import Backend
    from npu_retu.engine import build_engine

    return build_engine(cfg, model, total_steps=6, backend=Backend("cpu"), world_size=world_size,
                        micro_batch_size=cfg.rl.micro_batch_size, grad_accum_steps=2, optim=cfg.rl.optim)


def run_all(world_size: int = 1, ranks=None, engine_name: str = "local") -> dict:
    from npu_retu.config import load_config
    from npu_retu.distributed.process_group import RankInfo
    from npu_retu.trainer.rl import Stopwatch, policy_update, rl_loss

    ranks = ranks or RankInfo()
    out = {}
    for algorithm in ("luffy", "srft", "upt"):
        if engine_name == "deepspeed":
            cfg = load_config(None, overrides(algorithm) + ["engine.name=deepspeed", "engine.zero_stage=2",
                                                            "engine.fused_ops=false", "rl.algo.skip_grad_norm=null"])
            engine = deepspeed_engine(cfg, tiny_model(), ranks.world_size)
            engine.grads = []
        else:
            cfg = load_config(None, overrides(algorithm))
            engine = recording_engine(cfg, tiny_model(), ranks.world_size)
        metrics = []
        for step, groups in enumerate([syn_groups(algorithm), small_groups(algorithm)]):
            row, _ = policy_update(engine, rl_loss(cfg.rl), groups, cfg.rl, Stopwatch(), pad_id=0, seed=step, ranks=ranks)
            metrics.append(row)
        out[algorithm] = {"grads": engine.grads, "metrics": metrics,
                          "weights": {k: v.detach().float().cpu().clone() for k, v in engine.model.state_dict().items()}}
    return out


def main(path: str, engine_name: str = "local") -> None:
    from npu_retu.device import Backend
    from npu_retu.distributed import process_group as pg

    ranks = pg.init_process_group(Backend("cpu"))
    out = run_all(ranks.world_size, ranks, engine_name)
    if ranks.is_main:
        torch.save(out, path)
    pg.barrier()
    pg.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:3])
