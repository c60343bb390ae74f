"""RL with verifiable rewards: GRPO, DAPO_d and DAPO_dc (paper §3.2, Eq. 2-4; Appendix B), and the
synchronized SFT-RL baselines LUFFY, SRFT and UPT (§3.3, Eq. 4-8) on the same loop.

One plain loop, top to bottom; each RL step is

    prompts -> rollout.generate (n per prompt) -> reward (process pool) -> group advantages (Eq. 2)
    -> dynamic-sampling filter, drawing again until the train batch is full or the draw budget ends
    -> old log-probs (no grad) -> for each PPO epoch and mini-batch: log-probs -> clipped policy
    loss (Eq. 3-4) -> optimizer step -> rollout.sync_weights

with held-out evaluation every ``rl.eval_every`` steps, so every run yields (cumulative RL compute,
score) points for the ceiling fit (Eq. 11-12). Compute follows Appendix C, Eq. 22: every generated
sequence costs one forward pass, every trained sequence three per PPO epoch.

LUFFY / SRFT / UPT (their loss's ``experts`` is "mixed" or "gated"): each prompt brings its expert
trajectory from the data (``rl.train_files`` in SFT format, or joined by ``rl.expert_files``); it is
scored with the rollouts and put into the group by :func:`npu_retu.algos.mixed_group` (N of n,
beside n - N rollouts) or :func:`npu_retu.algos.gated_group` (in place of the n rollouts when the
gate sends the prompt to SFT). The update trains on every sample of the kept groups as for GRPO; the
loss tells expert rows from rollouts. Compute follows Eq. 24 (LUFFY, SRFT) and Eq. 25-27 (UPT).

One function per stage: :func:`collect_groups` up to the filter (:func:`draw_groups` makes one
generation batch, :func:`npu_retu.algos.fill_batch` is DAPO's filter and refill), and
:func:`policy_update` from the old log-probs to the last optimizer step. The loss is the registered
one that ``rl.algo.loss`` names (:mod:`npu_retu.algos.losses`; ``clipped`` by default); it picks
its kernels (``rl.kernels``).

``resume=True`` continues exactly from the newest complete checkpoint: the weights, optimizer,
schedule, prompt order and RNG are restored, and every rollout draws from a generator seeded by
(run seed, step, draw, rank), so the resumed run generates the same samples as an uninterrupted one.

Data parallel (several ranks, set up as for SFT): every rank draws the same prompts, generates and
scores every world_size-th of them, and the groups are gathered so that every rank sees the whole
generation batch and makes the same dynamic-sampling decision. Each mini-batch's sequences are then
split over the ranks; the loss is normalised by the mini-batch's global token count and the
gradients are summed, so the update is the single-process update on the same samples. Evaluation
problems are split over the ranks and their scores gathered. DeepSpeed ZeRO-1/2 works here (every
rank holds the whole model for generation); ZeRO-3 would gather the weights for every decoded
token and is refused.
"""

from __future__ import annotations

import contextlib
import functools
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from npu_retu.algos import (
    Group,
    PolicyBatch,
    RolloutBatch,
    advantages_of_group,
    build_loss,
    fill_batch,
    gated_group,
    mixed_group,
)
from npu_retu.algos.logprobs import response_token_logprobs
from npu_retu.config import Config, RLConfig
from npu_retu.data.errors import BadRowCounter, DataError, parse_source
from npu_retu.data.schemas import RLExample, attach_experts, load_rl, require_experts
from npu_retu.data.prepare import tokenize_rl_examples
from npu_retu.distributed import process_group as pg
from npu_retu.distributed.process_group import RankInfo
from npu_retu.engine import build_engine
from npu_retu.errors import UserError
from npu_retu.eval.runner import evaluate, merge_results
from npu_retu.eval.suite import Suite, run_suite, suite_from_config
from npu_retu.flops import ModelShape, hybrid_step_flops, step_mfu, tokens_flops, upt_step_flops
from npu_retu.models.modeling import load_model, resolve_path
from npu_retu.report.metrics import WeightedSums, max_over_ranks, sum_over_ranks, write_json_atomic
from npu_retu.report.progress import Progress
from npu_retu.reward import make_reward
from npu_retu.rollout import SamplingParams, Trajectory, build_rollout
from npu_retu.trainer import checkpoint as ckpt
from npu_retu.trainer.setup import Run, data_path, init_compute, open_run


@dataclass
class RLResult:
    run_dir: Path
    steps: int
    flops: float  # RL compute (Eq. 22), from the start of this RL run
    evals: list[dict[str, Any]] = field(default_factory=list)  # one per evaluation point
    final_checkpoint: Path | None = None


@dataclass
class Sample:
    """One trajectory as the update trains on it."""

    prompt_ids: list[int]
    response_ids: list[int]
    advantage: float  # its group's advantage (Eq. 2), every response token's A_{i,t}
    rollout_logprobs: list[float]  # what the rollout engine sampled with (the drift metric)
    expert: bool = False  # an expert trajectory from the data (LUFFY / SRFT / UPT), not a rollout
    correct: bool = False  # reward >= 1 (SRFT weighs correct and wrong rollouts differently)


class PromptSampler:
    """Prompts in a shuffled order, one epoch after another; its state is two integers."""

    def __init__(self, size: int, seed: int, shuffle: bool = True):
        if size == 0:
            raise UserError("no RL prompts to train on")
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.epoch, self.position = 0, 0
        self._order = self._plan(0)

    def _plan(self, epoch: int) -> list[int]:
        order = list(range(self.size))
        if self.shuffle:
            random.Random(f"{self.seed}:{epoch}").shuffle(order)
        return order

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.position == self.size:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._plan(self.epoch)
            out.append(self._order[self.position])
            self.position += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._plan(self.epoch)


class Stopwatch:
    """Seconds per stage of one step (``time/<stage>_s``): ``with timer("rollout"): ...``."""

    def __init__(self) -> None:
        self.seconds = {"rollout": 0.0, "reward": 0.0, "logprobs": 0.0, "update": 0.0}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - t0


def rollout_seed(run_seed: int, step: int, draw: int, rank: int = 0) -> int:
    """The sampling seed of one generation batch (of one rank's share of it): a pure function of
    where it is in the run."""
    return (run_seed * 1_000_003 + step * 1_009 + draw + rank * 7_919_993) % (2**31)


def check_rl_scale(cfg: Config) -> None:
    """Refuse what the RL trainer cannot do, clearly, before anything is loaded."""
    if cfg.engine.name == "deepspeed" and cfg.engine.zero_stage == 3:
        raise UserError(
            "engine.zero_stage=3 with RL: the rollout generates with the training model, and under ZeRO-3 every "
            "decoded token would gather all the weights (and ranks decode different lengths); use zero_stage 1 or 2"
        )
    if cfg.engine.name == "deepspeed" and cfg.rl.algo.skip_grad_norm is not None:
        raise UserError(
            f"rl.algo.skip_grad_norm={cfg.rl.algo.skip_grad_norm} (UPT's skipped steps) needs engine.name=local: "
            "DeepSpeed's ZeRO optimizer clips and steps in one call, with no pre-step norm to skip on; "
            "set rl.algo.skip_grad_norm=null to run UPT on DeepSpeed without the skip"
        )


def train_rl(
    cfg: Config,
    *,
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
    reward: Any = None,
    save_checkpoints: bool = True,
) -> RLResult:
    """Run RL from ``cfg.model.path`` as configured; returns the run folder and evaluation points.

    ``reward`` replaces the configured reward (``rl.reward``) with any object that has
    ``score(list of (response, ground truths)) -> list[float]``, ``stats()`` and ``close()``.
    The run folder is locked for the whole run, as for SFT.
    """
    check_rl_scale(cfg)
    backend, ranks, say = init_compute(cfg, quiet=quiet)
    with open_run(cfg, backend, ranks, say, resume=resume, overwrite=overwrite, job="rl") as run:
        return _train_rl(cfg, run, reward=reward, save_checkpoints=save_checkpoints)


def _train_rl(cfg: Config, run: Run, *, reward: Any, save_checkpoints: bool) -> RLResult:
    rl, algo = cfg.rl, cfg.rl.algo
    backend, ranks, say = run.backend, run.ranks, run.say
    reference_model = None
    if algo.kl_coef > 0:  # the starting policy, frozen (never the resumed weights)
        reference_model = load_model(cfg.model.path, cfg.model.dtype, cfg.model.attn_implementation,
                                     trust_remote_code=cfg.model.trust_remote_code)
        reference_model = reference_model.to(backend.device()).eval()
        reference_model.requires_grad_(False)

    counter = BadRowCounter()
    prompts, examples, experts = load_rl_prompts(rl, run.tokenizer, cfg.data.skip_bad_rows, counter, num_workers=cfg.data.num_workers)
    test_suite = load_eval_suite(cfg, counter)
    sampler = PromptSampler(len(examples), cfg.run.seed, cfg.data.shuffle)
    optimizer_steps = rl.max_steps * rl.ppo_epochs * (rl.train_batch_prompts // rl.mini_batch_prompts)
    seqs_per_rank = -(-rl.mini_batch_prompts * algo.n // ranks.world_size)
    engine = build_engine(
        cfg, run.model, total_steps=optimizer_steps, backend=backend, world_size=ranks.world_size,
        micro_batch_size=rl.micro_batch_size, grad_accum_steps=-(-seqs_per_rank // rl.micro_batch_size), optim=rl.optim,
    )
    loss_fn = rl_loss(rl)
    rollout, rollout_name = build_rollout(
        rl.rollout, model=engine.model, tokenizer=run.tokenizer, model_path=str(resolve_path(cfg.model.path)),
        dtype=cfg.model.dtype, max_model_len=rl.max_prompt_length + rl.max_response_length, seed=cfg.run.seed,
        backend_name=backend.name, world_size=ranks.world_size,
    )
    shape = ModelShape.from_hf_config(run.model.config)
    peak = backend.peak_flops(cfg.model.dtype)  # one chip's dense peak FLOP/s, the MFU denominator (None on a CPU)

    step, flops, elapsed, evals = 0, 0.0, 0.0, []
    state = run.restore(engine)
    if state is not None:
        sampler.load_state_dict(state["sampler"])
        step, flops, elapsed, evals = state["step"], state["flops"], state["elapsed"], state["evals"]
        say(f"rl: resumed from {run.resume_from} (step {step})")
    rollout.sync_weights(engine.model)  # a separate engine starts from the model folder: give it these weights
    logger = run.logger(step)
    say(
        f"rl: {rl.algorithm} on {len(examples)} prompts, {rl.max_steps} steps of {rl.train_batch_prompts} prompts x "
        f"{algo.n} samples, evaluation on {test_suite.describe() if test_suite else 'no problems'} every {rl.eval_every} steps, device {backend.name}, "
        f"engine {cfg.engine.name}, rollout {rollout_name}" + (f", {ranks.world_size} ranks ({backend.dist_backend})" if ranks.distributed else "")
    )
    if reward is None:
        reward = make_reward(rl.reward.name, num_workers=rl.reward.num_workers, timeout_s=rl.reward.timeout_s)
    evaluate_now = functools.partial(evaluate_policy, rollout, run, test_suite, reward, logger)

    # a bar on a terminal, else a line every NPU_RETU_PROGRESS_INTERVAL seconds (also when quiet: CI logs and nohup)
    progress = Progress(rl.max_steps, "rl steps", initial=step, enabled=cfg.run.progress and ranks.is_main)
    try:
        if step == 0 and rl.eval_at_start and test_suite:
            evals.append(evaluate_now(0, flops))
        while step < rl.max_steps and not compute_spent(rl, flops):
            t_step, timer, reward_before = time.perf_counter(), Stopwatch(), reward.stats()
            # prompts -> rollout -> reward -> group advantages (Eq. 2) -> dynamic-sampling filter
            batch = collect_groups(step, sampler, prompts, examples, experts, rollout, reward, rl, cfg.run.seed, ranks, timer)
            rollout.sleep()  # hands its accelerator memory to training where the platform can (rl.rollout.sleep_level)
            row = {**rollout_metrics(batch.generated, batch.kept), **{f"ds/{k}": float(v) for k, v in batch.stats.items()}}
            if algo.experts is not None:
                row.update(expert_metrics(batch, algo.experts))
            train_lens: list[int] = []
            if batch.kept:
                # old log-probs -> for each PPO epoch and mini-batch: log-probs -> loss (Eq. 3-4) -> step
                update, train_lens = policy_update(
                    engine, loss_fn, batch.kept, rl, timer, pad_id=run.tokenizer.pad_token_id,
                    seed=rollout_seed(cfg.run.seed, step, 997), reference_model=reference_model, ranks=ranks,
                )
                row.update(update)
                row["train/tokens"] = float(rl.ppo_epochs * sum(train_lens))
                rollout.sync_weights(engine.model)  # wakes the engine; the next draw samples from the updated policy
            else:  # the draw budget ended with nothing to learn from: count the step, skip the update
                row["train/skipped_update"] = 1.0
            backend.synchronize()
            gen_lens = generated_lengths(batch, algo.experts)
            counts = flops_counts(batch, gen_lens)
            if algo.experts is None or not batch.kept:
                step_flops = rl_step_flops(shape, gen_lens, train_lens, rl.ppo_epochs)
            else:
                step_flops = synchronized_step_flops(shape, counts, algo.experts, rl.ppo_epochs)
            row.update(counts)
            step, flops = step + 1, flops + step_flops
            dt = time.perf_counter() - t_step
            elapsed += dt
            row.update(step_metrics(batch, reward.stats(), reward_before, timer, dt, step_flops))
            if peak:  # the whole step (generation + update) over all ranks: npu_retu.flops.step_mfu
                row["train/mfu"] = step_mfu(step_flops, dt, peak, ranks.world_size)
            logger.log(step, flops, row)
            budget = {"compute": f"{100 * flops / rl.max_flops:.0f}%"} if rl.max_flops > 0 else {}
            progress.update(1, acc=f"{row['rollout/accuracy']:.3f}", **budget)
            say(
                f"rl step {step:>4}  acc {row['rollout/accuracy']:.3f}  kept {batch.stats['groups_kept']}/"
                f"{batch.stats['groups_generated']} in {batch.stats['draws']} draws  len {row['rollout/response_length_mean']:.0f}  "
                f"clip {row.get('actor/clipfrac', 0.0):.3f}  {dt:.1f}s"
            )

            last_step = step == rl.max_steps or compute_spent(rl, flops)
            if rl.eval_every > 0 and test_suite and (step % rl.eval_every == 0 or last_step):
                evals.append(evaluate_now(step, flops))
            if save_checkpoints and (step % rl.save_every == 0 or last_step):
                state = {
                    "step": step,
                    "flops": flops,
                    "elapsed": elapsed,
                    "evals": evals,
                    "engine": engine.state_dict(),
                    "sampler": sampler.state_dict(),
                    "rng": backend.rng_state(),
                    "config": cfg.to_dict(),
                }
                run.save_checkpoint(step, engine, state, keep=rl.keep_checkpoints)
    finally:
        progress.close()
        reward.close()
        logger.close()

    if counter.skipped:
        say(counter.summary())
        if ranks.is_main:
            say(f"rl: every skipped row is listed in {counter.write(run.dir / 'skipped_rows.jsonl')}")
    if ranks.is_main:
        write_json_atomic(run.dir / "evals.json", evals)
    pg.barrier()
    return RLResult(run_dir=run.dir, steps=step, flops=flops, evals=evals, final_checkpoint=ckpt.latest_checkpoint(run.dir))


def rl_loss(rl: RLConfig) -> Any:
    """The registered loss ``rl.algo.loss`` names, with the algorithm's settings, ``rl.kernels`` and
    the log-probs at the rollout temperature."""
    return build_loss(rl.algo.loss, algo=rl.algo, kernels=rl.kernels, temperature=rl.rollout.temperature,
                      max_response_length=rl.max_response_length)


def compute_spent(rl: RLConfig, flops: float) -> bool:
    """``rl.max_flops``: a compute budget (Appendix C FLOPs) for compute-matched comparisons."""
    return rl.max_flops > 0 and flops >= rl.max_flops


# --------------------------------------------------------------------------------------------
# prompts -> rollout -> reward -> advantages -> filter


def collect_groups(
    step: int, sampler: PromptSampler, prompts: list[list[int]], examples: list[RLExample], experts: list[list[list[int]]],
    rollout: Any, reward: Any, rl: RLConfig, run_seed: int, ranks: RankInfo, timer: Stopwatch,
) -> RolloutBatch:
    """One step's groups: generation batches of :func:`draw_groups` through DAPO's dynamic-sampling
    filter (:func:`npu_retu.algos.fill_batch`) until ``rl.train_batch_prompts`` groups are kept or
    ``rl.algo.max_draws`` batches were drawn; GRPO (no dynamic sampling): one batch, all kept."""
    draw = functools.partial(draw_groups, step=step, sampler=sampler, prompts=prompts, examples=examples, experts=experts,
                             rollout=rollout, reward=reward, rl=rl, run_seed=run_seed, ranks=ranks, timer=timer)
    dynamic = rl.algo.dynamic_sampling
    return fill_batch(draw, rl.train_batch_prompts, rl.algo.max_draws if dynamic else 1, rl.algo.n, filter=dynamic)


def draw_groups(
    draw: int, *, step: int, sampler: PromptSampler, prompts: list[list[int]], examples: list[RLExample],
    experts: list[list[list[int]]], rollout: Any, reward: Any, rl: RLConfig, run_seed: int, ranks: RankInfo, timer: Stopwatch,
) -> list[Group]:
    """Generation batch ``draw`` of step ``step``: the next prompts -> ``rl.algo.n`` rollouts each ->
    rewards -> group advantages (Eq. 2). LUFFY / SRFT: n - N rollouts and the prompt's N expert
    trajectories (``experts[i]``, token ids) scored together, advantages over all n; UPT: n rollouts,
    and the gate may swap them for the expert (:mod:`npu_retu.algos.synchronized`).

    Every rank takes the same prompts, generates and scores every world_size-th of them (seeded by
    its place in the run, :func:`rollout_seed`), and the groups are gathered, so that every rank holds
    the whole batch and makes the same dynamic-sampling decision.
    """
    algo = rl.algo
    indices = sampler.take(rl.gen_batch_prompts if algo.dynamic_sampling else rl.train_batch_prompts)
    mine = indices[ranks.rank :: ranks.world_size]
    groups = []
    if mine:
        g = algo.rollouts_per_prompt
        params = SamplingParams(n=g, temperature=rl.rollout.temperature, top_p=rl.rollout.top_p,
                                max_new_tokens=rl.max_response_length, seed=rollout_seed(run_seed, step, draw, ranks.rank))
        with timer("rollout"):
            trajectories = rollout.generate([prompts[i] for i in mine], params)
        n_expert = {"mixed": algo.experts_per_prompt, "gated": 1}.get(algo.experts, 0)
        expert_trajectories = [expert_trajectory(j, g + k, prompts[i], experts[i][k], examples[i].experts[k])
                               for j, i in enumerate(mine) for k in range(n_expert)]
        with timer("reward"):
            rewards = reward.score([(t.text, examples[mine[t.prompt_index]].ground_truth) for t in trajectories + expert_trajectories])
        rewards, expert_rewards = rewards[: len(trajectories)], rewards[len(trajectories) :]
        for j, i in enumerate(mine):
            mine_t, mine_r = trajectories[j * g : (j + 1) * g], rewards[j * g : (j + 1) * g]
            mine_e, mine_er = expert_trajectories[j * n_expert : (j + 1) * n_expert], expert_rewards[j * n_expert : (j + 1) * n_expert]
            if algo.experts == "mixed":
                groups.append(mixed_group(i, prompts[i], mine_t, mine_e, mine_r + mine_er))
            elif algo.experts == "gated":
                groups.append(gated_group(i, prompts[i], mine_t, mine_e[0], mine_r, mine_er[0], algo.gate))
            else:
                advantages = advantages_of_group(mine_r, algo.adv_estimator, algo.normalize_std)
                groups.append(Group(i, prompts[i], mine_t, mine_r, advantages))
    return pg.interleave(pg.all_gather_objects(groups))  # back in the order of `indices`


def expert_trajectory(prompt_index: int, sample_index: int, prompt_ids: list[int], response_ids: list[int], text: str) -> Trajectory:
    """An expert trajectory from the data as a group member beside the rollouts (no log-probs: not sampled)."""
    return Trajectory(prompt_index, sample_index, prompt_ids, list(response_ids), text, [], "stop", expert=True)


# --------------------------------------------------------------------------------------------
# old log-probs -> mini-batch loss -> optimizer step


# metrics that are a micro-batch's share of the mini-batch's loss (normalised by the mini-batch's
# global token count): summed over the mini-batch's micro-batches (and ranks), not averaged
MINI_BATCH_SUMS = ("pg_loss", "kl_ref", "sft_loss")


def policy_update(
    engine: Any, loss_fn: Any, groups: list[Group], rl: RLConfig, timer: Stopwatch, *, pad_id: int, seed: int,
    reference_model: Any = None, ranks: RankInfo = RankInfo(),
) -> tuple[dict[str, float], list[int]]:
    """Old log-probs, then PPO epochs of mini-batch optimizer steps on ``loss_fn`` (Eq. 3-4).

    Every rank holds all of ``groups`` and trains on every world_size-th sequence of each
    mini-batch; the loss is normalised by the mini-batch's global token and sequence counts and the
    engine sums the gradients, so the update equals one process's. Returns the metrics (means over
    every rank's micro-batches; ``actor/pg_loss`` the mean mini-batch loss) and the token length of
    every trained sequence.
    """
    samples = [Sample(g.prompt_ids, t.response_ids, a, t.logprobs, expert=t.expert, correct=r >= 1.0)
               for g in groups for t, a, r in zip(g.trajectories, g.advantages, g.rewards)]
    # Which rank trains which sequence, decided up front (the same on every rank): the shuffled
    # order of each PPO epoch, cut into mini-batches, every world_size-th sequence to a rank.
    order_rng = random.Random(seed)
    epochs = []
    for _epoch in range(rl.ppo_epochs):
        order = list(range(len(samples)))
        order_rng.shuffle(order)
        epochs.append(_chunks(order, rl.mini_batch_prompts * rl.algo.n))
    mine = sorted({i for minis in epochs for mini in minis for i in mini[ranks.rank :: ranks.world_size]})

    with timer("logprobs"):  # the policy that generated the samples, before any update of this step
        # (an expert trajectory has no old policy: no losses here use one)
        old = old_logprobs(engine.model, samples, [i for i in mine if not samples[i].expert], rl, pad_id, engine.device)
        ref = old_logprobs(reference_model, samples, mine, rl, pad_id, engine.device) if reference_model is not None else None

    totals = WeightedSums()  # this rank's share, added up over the ranks at the end
    drift, drift_max = rollout_drift(samples, mine, old)  # the trainer-rollout mismatch
    totals.add({"logprob_drift": drift["mean"]}, weight=drift["tokens"])
    is_weights = truncated_is_weights(samples, mine, old, rl.rollout.is_cap) if rl.rollout.is_correction == "tis" else None
    if is_weights is not None:
        weights = torch.cat([is_weights[i] for i in mine]) if mine else torch.zeros(0)
        totals.add({"is_weight_mean": float(weights.mean()) if weights.numel() else 0.0,
                    "is_capped_frac": float((weights >= rl.rollout.is_cap).float().mean()) if weights.numel() else 0.0},
                   weight=weights.numel())

    optimizer_steps, skipped_steps = 0, 0
    with timer("update"):
        for minis in epochs:
            for mini in minis:
                counts = {"global_token_count": sum(len(samples[i].response_ids) for i in mini), "global_seq_count": len(mini),
                          "global_expert_token_count": sum(len(samples[i].response_ids) for i in mini if samples[i].expert)}
                micros = _chunks(mini[ranks.rank :: ranks.world_size], rl.micro_batch_size)
                # a rank with no sequence in this mini-batch still joins the gradient reduction: one
                # forward/backward on the mini-batch's first sequence, with weight 0
                weight = 1.0 if micros else 0.0
                micros = micros or [[mini[0]]]
                for number, micro in enumerate(micros):
                    batch = policy_batch(samples, micro, old, ref, pad_id, engine.device, is_weights=is_weights, **counts)
                    loss, metrics = loss_fn(engine.module, batch)
                    engine.backward(loss * weight, last=number == len(micros) - 1)
                    tokens = int(metrics.pop("tokens"))
                    own_weights = metrics.pop("weights", {})  # metrics averaged over other counts than all tokens
                    totals.add({k: metrics.pop(k) for k in MINI_BATCH_SUMS if k in metrics}, weight=weight)
                    for name, value in metrics.items():  # token-weighted (every rank, the same names)
                        totals.add({name: value}, weight=own_weights.get(name, tokens) if weight else 0)
                stepped = engine.step(skip_above=rl.algo.skip_grad_norm)  # grad_norm, lr: means over the optimizer steps
                skipped_steps += int(stepped.pop("skipped", 0))
                totals.add(stepped)
                optimizer_steps += 1

    totals = totals.over_ranks()
    out = {f"actor/{k}": totals.mean(k) for k in totals.sums if k not in MINI_BATCH_SUMS}
    out.update({f"actor/{k}": totals.sums[k] / max(1, optimizer_steps) for k in MINI_BATCH_SUMS if k in totals.sums})
    out["actor/logprob_drift_max"] = max_over_ranks({"drift": drift_max})["drift"]
    out["actor/advantage_abs_mean"] = sum(abs(s.advantage) for s in samples) / max(1, len(samples))
    if rl.algo.skip_grad_norm is not None:
        out["actor/skipped_steps"] = float(skipped_steps)  # grad norm above rl.algo.skip_grad_norm (the same on every rank)
    return out, [len(s.prompt_ids) + len(s.response_ids) for s in samples]


def rollout_drift(samples: list[Sample], indices: list[int], old: dict[int, torch.Tensor]) -> tuple[dict[str, float], float]:
    """The trainer-rollout mismatch on ``samples[i]``, ``i`` in ``indices``: ``({"mean": mean |logp_train -
    logp_rollout| over their response tokens, "tokens": how many}, the largest |difference|)``. Samples
    whose engine reported no log-probs do not count."""
    gaps = [(old[i] - torch.tensor(samples[i].rollout_logprobs, dtype=torch.float32)).abs()
            for i in indices if samples[i].rollout_logprobs]
    gaps = torch.cat(gaps) if gaps else torch.zeros(0)
    if not gaps.numel():
        return {"mean": 0.0, "tokens": 0}, 0.0
    return {"mean": float(gaps.mean()), "tokens": gaps.numel()}, float(gaps.max())


def truncated_is_weights(samples: list[Sample], indices: list[int], old: dict[int, torch.Tensor], cap: float) -> dict[int, torch.Tensor]:
    """Truncated importance sampling (TIS, ``rl.rollout.is_correction: tis``): per response token,
    ``min(pi_old(y_t) / pi_rollout(y_t), cap) = min(exp(logp_old - logp_rollout), cap)``, the weight
    that corrects for the rollout engine sampling from a slightly different distribution than the
    trainer's (verl and TRL's TIS). 1 where the engine reported no log-probs and on expert trajectories."""
    out = {}
    for i in indices:
        if samples[i].rollout_logprobs:
            out[i] = torch.exp(old[i] - torch.tensor(samples[i].rollout_logprobs, dtype=torch.float32)).clamp(max=cap)
        else:  # (an expert trajectory: not sampled, no old policy)
            out[i] = torch.ones(len(samples[i].response_ids), dtype=torch.float32)
    return out


@torch.no_grad()
def old_logprobs(
    model: Any, samples: list[Sample], indices: list[int], rl: RLConfig, pad_id: int, device: Any
) -> dict[int, torch.Tensor]:
    """The response-token log-probs of ``samples[i]`` for each ``i`` in ``indices`` under ``model`` at
    the rollout temperature (no grad), as 1-D CPU tensors, a micro-batch at a time."""
    out: dict[int, torch.Tensor] = {}
    for chunk in _chunks(indices, rl.micro_batch_size):
        batch = make_rl_batch([(samples[i].prompt_ids, samples[i].response_ids) for i in chunk], pad_id, device)
        out.update(zip(chunk, response_token_logprobs(
            model, batch["input_ids"], batch["attention_mask"], batch["response_spans"], temperature=rl.rollout.temperature,
            kernels=rl.kernels,
        )))
    return out


def policy_batch(
    samples: list[Sample], indices: list[int], old: dict[int, torch.Tensor], ref: dict[int, torch.Tensor] | None, pad_id: int,
    device: Any, *, global_token_count: int, global_seq_count: int, global_expert_token_count: int = 0,
    is_weights: dict[int, torch.Tensor] | None = None,
) -> PolicyBatch:
    """The :class:`PolicyBatch` of ``samples[i]`` for ``i`` in ``indices``: the padded rows, their
    response mask, old (and reference) log-probs and advantages.

    With ``is_weights`` (TIS) the advantages are per token, ``A_i * w_{i,t}``: the clipped loss is
    positively homogeneous in the advantage (clipping and the dual clip depend on its sign only), so
    this weights every token's loss term by ``w_{i,t}``, as TIS does, on every kernel path."""
    rows = make_rl_batch([(samples[i].prompt_ids, samples[i].response_ids) for i in indices], pad_id, device)
    shape = (len(indices), rows["input_ids"].shape[1] - 1)
    expert = torch.tensor([samples[i].expert for i in indices], dtype=torch.bool, device=device)
    correct = torch.tensor([samples[i].correct for i in indices], dtype=torch.bool, device=device)
    mask = torch.zeros(shape, dtype=torch.float32, device=device)
    old_logps = torch.zeros(shape, dtype=torch.float32, device=device)
    ref_logps = torch.zeros(shape, dtype=torch.float32, device=device) if ref is not None else None
    advantages = torch.tensor([samples[i].advantage for i in indices], dtype=torch.float32, device=device)
    if is_weights is not None:
        advantages = advantages[:, None].expand(shape).clone()
    for row, i in enumerate(indices):
        start, end = rows["response_spans"][row]
        mask[row, start - 1 : end - 1] = 1.0
        if i in old:  # (the zero-weight stand-in of a rank without sequences has none)
            old_logps[row, start - 1 : end - 1] = old[i].to(device)
        if ref is not None and i in ref:
            ref_logps[row, start - 1 : end - 1] = ref[i].to(device)
        if is_weights is not None and i in is_weights:
            advantages[row, start - 1 : end - 1] *= is_weights[i].to(device)
    return PolicyBatch(
        input_ids=rows["input_ids"], attention_mask=rows["attention_mask"], response_mask=mask, old_logprobs=old_logps,
        advantages=advantages,
        ref_logprobs=ref_logps, global_token_count=global_token_count, global_seq_count=global_seq_count,
        expert=expert, correct=correct, global_expert_token_count=global_expert_token_count,
    )


def make_rl_batch(sequences: list[tuple[list[int], list[int]]], pad_id: int, device) -> dict[str, Any]:
    """Right-padded ``prompt + response`` rows; ``response_spans[i]`` is ``(start, end)`` of row i's response."""
    width = max(len(p) + len(r) for p, r in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    spans = []
    for row, (p, r) in enumerate(sequences):
        ids = list(p) + list(r)
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
        spans.append((len(p), len(ids)))
    return {"input_ids": input_ids.to(device), "attention_mask": attention.to(device), "response_spans": spans}


def _chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def rl_step_flops(shape, generated_lengths: list[int], trained_lengths: list[int], ppo_epochs: int = 1) -> float:
    """Compute of one RL step by Appendix C, Eq. 22: every generated sequence (all K draws) costs one
    forward pass, every trained sequence three per PPO epoch, each token at F_fwd(mean length).

    With K draws of B_gen x G sequences and B_train x G trained ones, all of length S, this is
    (K B_gen + 3 B_train) G S F_fwd(S), Eq. 22 exactly. The no-grad old-log-prob pass is not in
    Eq. 22 and is not counted.
    """
    flops = tokens_flops(shape, generated_lengths, passes=1) if generated_lengths else 0.0
    if trained_lengths:
        flops += ppo_epochs * tokens_flops(shape, trained_lengths, passes=3)
    return flops


def synchronized_step_flops(shape, counts: dict[str, float], experts: str, ppo_epochs: int = 1) -> float:
    """Compute of one LUFFY / SRFT step (Eq. 24, ``experts == "mixed"``) or UPT step (Eq. 25-27,
    ``"gated"``) from the step's counts (:func:`flops_counts`), by :func:`npu_retu.flops.hybrid_step_flops`
    and :func:`npu_retu.flops.upt_step_flops`: S_on and S_off are the mean prompt + response lengths
    of the trained rollouts and expert trajectories (UPT's S_on, as Eq. 25 counts it, that of every
    generated rollout). With several PPO epochs the training part (3 passes) repeats."""
    on_n, off_n = counts["flops/on_sequences"], counts["flops/off_sequences"]
    s_off = counts["flops/off_tokens"] / off_n if off_n else 0.0
    if experts == "mixed":
        s_on = counts["flops/on_tokens"] / on_n if on_n else 0.0
        both = hybrid_step_flops(shape, batch=1, group_size=on_n, n_expert=off_n, seq_len_on=s_on, seq_len_off=s_off)
        return both / 4 * (1 + 3 * ppo_epochs)  # Eq. 24: once generated (forward), once trained (3 passes)
    gen_n = counts["flops/gen_sequences"]
    s_on = counts["flops/gen_tokens"] / gen_n if gen_n else 0.0
    generation = upt_step_flops(shape, group_size=gen_n, seq_len_on=s_on, n_on=0, n_off=0, seq_len_off=s_off)
    training = upt_step_flops(shape, group_size=0, seq_len_on=s_on, n_on=on_n, n_off=off_n, seq_len_off=s_off)
    return generation + ppo_epochs * training


# --------------------------------------------------------------------------------------------
# evaluation, data and metrics


def evaluate_sharded(rollout, tokenizer, examples: list, reward_fn, ranks, samples: list | None = None, **settings):
    """:func:`npu_retu.eval.runner.evaluate` with the problems split over the ranks and the scores
    (and, with ``samples``, the per-sample records) gathered: every rank returns the result over all
    of ``examples``."""
    mine = examples[ranks.rank :: ranks.world_size]
    kept: list | None = [] if samples is not None else None
    part = evaluate(rollout, tokenizer, mine, reward_fn, samples=kept, **settings) if mine else None
    if not ranks.distributed:
        if samples is not None:
            samples.extend(kept or [])
        return part
    if samples is not None:  # rank r's problem i is problem r + W * i
        gathered = pg.all_gather_objects([(ranks.rank, kept or [])])
        records = [{**rec, "problem": rank + ranks.world_size * rec["problem"]} for part_list in gathered for rank, recs in part_list for rec in recs]
        samples.extend(sorted(records, key=lambda rec: (rec["problem"], rec["sample"])))
    # shard r holds problems r, r + W, ...; ranks past the last problem evaluated nothing
    return merge_results([p for p in pg.all_gather_objects(part) if p is not None], ks=settings.get("ks", (1,)))


def evaluate_policy(
    rollout: Any, run: Run, suite: Suite, reward: Any, logger: Any, at_step: int, flops: float
) -> dict[str, Any]:
    """The held-out evaluation point (RL compute so far, scores) at ``at_step``: every benchmark of the
    suite (:func:`npu_retu.eval.suite.run_suite`, the same path as ``npu-retu eval``), written to
    ``eval/step-N.json`` with the generations and per-item scores in ``eval/step-N/`` (with
    ``eval.save_generations``), logged (each benchmark's avg@n against compute), and returned
    without the per-problem scores."""
    t0 = time.perf_counter()
    e = run.cfg.eval
    evaluate_fn = functools.partial(evaluate_sharded, ranks=run.ranks)
    save_to = run.dir / "eval" / f"step-{at_step:06d}" if e.save_generations else None
    result = run_suite(rollout, run.tokenizer, suite, reward.score, seed=e.seed, evaluate_fn=evaluate_fn,
                       save_to=save_to, write=run.ranks.is_main, show_progress=run.cfg.run.progress)
    point = {"step": at_step, "flops": flops, **result, "seconds": time.perf_counter() - t0}
    if run.ranks.is_main:
        write_json_atomic(run.dir / "eval" / f"step-{at_step:06d}.json", point)
    summary = {k: v for k, v in point.items() if k != "scores"}
    row = {f"eval/{k}": v for k, v in summary.items()
           if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "flops")}
    for name, scores in summary.get("benchmarks", {}).items():  # eval/gsm8k/avg_at_n, ... against compute
        row.update({f"eval/{name}/{k}": float(v) for k, v in scores.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "seed"})
    logger.log(at_step, flops, row)
    by_set = "".join(f"; {name} {100 * v['avg_at_n']:.1f}%" for name, v in summary.get("benchmarks", {}).items())
    run.say(f"rl: eval at step {at_step}: {point['summary']}{by_set}")
    return summary


def load_rl_prompts(rl: RLConfig, tokenizer, skip_bad_rows: bool, counter, *, num_workers: int | None = 0) -> tuple[list[list[int]], list[RLExample], list[list[list[int]]]]:
    """Prompt token ids, examples and, for LUFFY / SRFT / UPT, each prompt's expert trajectories as
    token ids (``rl.expert_files`` joined by prompt text). A prompt longer than
    ``rl.max_prompt_length``, an expert trajectory longer than ``rl.max_response_length`` or a
    missing expert is an error naming the file and row (or, with ``data.skip_bad_rows``, a counted skip)."""
    examples = load_rl([data_path(f) for f in rl.train_files], skip_bad_rows=skip_bad_rows, counter=counter)
    if rl.expert_files:
        examples = attach_experts(examples, [data_path(f) for f in rl.expert_files], skip_bad_rows=skip_bad_rows, counter=counter)
    needed = {"mixed": rl.algo.experts_per_prompt, "gated": 1}.get(rl.algo.experts, 0)
    if needed:
        examples = require_experts(examples, needed, algorithm=rl.algorithm, skip_bad_rows=skip_bad_rows, counter=counter)
    prompts, kept, experts = [], [], []
    # tokenize_prompt and tokenize_expert of each example, ahead in data.num_workers processes (npu_retu.data.prepare)
    tokenized = tokenize_rl_examples(examples, tokenizer, experts=needed, num_workers=num_workers)
    for ex, (ids, expert_ids) in zip(examples, tokenized):
        problem = None
        if len(ids) > rl.max_prompt_length:
            problem = ("prompt", "prompt longer than rl.max_prompt_length",
                       f"prompt has {len(ids)} tokens, more than rl.max_prompt_length={rl.max_prompt_length}")
        longest = max((len(e) for e in expert_ids), default=0)
        if problem is None and longest > rl.max_response_length:
            problem = ("experts", "expert trajectory longer than rl.max_response_length",
                       f"expert trajectory has {longest} tokens, more than rl.max_response_length={rl.max_response_length}")
        if problem is not None:
            field_name, reason, message = problem
            if skip_bad_rows:
                counter.skip(ex.source, reason, field=field_name, message=message)
                continue
            file, row = parse_source(ex.source)
            raise DataError(file, message, row=row, field=field_name, reason=reason)
        prompts.append(ids)
        kept.append(ex)
        experts.append(expert_ids)
    if not kept:
        raise UserError(f"no RL prompts left in {rl.train_files}")
    return prompts, kept, experts


def load_eval_suite(cfg: Config, counter) -> Suite | None:
    """The held-out benchmarks (:func:`npu_retu.eval.suite.suite_from_config`): ``eval.suite``, else
    one per ``eval.files`` entry (``NAME=FILE`` through that benchmark's loader: ``gsm8k=.../test.jsonl``
    scores against the number after ``####``; a plain path as RL rows); None when there is none."""
    return suite_from_config(cfg.eval, cfg.rl.max_response_length, data_path,
                             skip_bad_rows=cfg.data.skip_bad_rows, counter=counter)


def rollout_metrics(generated: list[Group], kept: list[Group]) -> dict[str, float]:
    """Reward / accuracy over everything generated this step (the rollouts: expert trajectories are
    not generated), lengths, and the share cut at the limit."""
    trajectories = [t for g in generated for t in g.trajectories if not t.expert]
    rewards = [r for g in generated for t, r in zip(g.trajectories, g.rewards) if not t.expert]
    lengths = [len(t.response_ids) for t in trajectories]
    n = max(1, len(trajectories))
    out = {
        "rollout/reward_mean": sum(rewards) / n,
        "rollout/accuracy": sum(1 for r in rewards if r >= 1.0) / n,
        "rollout/response_length_mean": sum(lengths) / n,
        "rollout/response_length_max": float(max(lengths, default=0)),
        "rollout/truncated_fraction": sum(1 for t in trajectories if t.finish_reason == "length") / n,
        "rollout/sequences": float(len(trajectories)),
    }
    if kept:
        kept_rewards = [r for g in kept for r in g.rewards]
        out["train/reward_mean"] = sum(kept_rewards) / len(kept_rewards)
    return out


def expert_metrics(batch: RolloutBatch, experts: str) -> dict[str, float]:
    """LUFFY / SRFT / UPT: the on-policy and expert shares of the trained response tokens, the
    experts' reward, and UPT's gate decisions (groups sent to SFT vs RL)."""
    trained = [t for g in batch.kept for t in g.trajectories]
    expert_tokens = sum(len(t.response_ids) for t in trained if t.expert)
    all_tokens = max(1, sum(len(t.response_ids) for t in trained))
    expert_rewards = [r for g in batch.generated for t, r in zip(g.trajectories, g.rewards) if t.expert]
    out = {
        "mix/expert_token_share": expert_tokens / all_tokens,
        "mix/on_policy_token_share": 1.0 - expert_tokens / all_tokens if trained else 0.0,
        "mix/expert_sequences": float(sum(1 for t in trained if t.expert)),
        "mix/expert_reward_mean": sum(expert_rewards) / max(1, len(expert_rewards)),
    }
    if experts == "gated":
        to_sft = sum(1 for g in batch.kept if g.trajectories and g.trajectories[0].expert)
        out["upt/groups_sft"] = float(to_sft)
        out["upt/groups_rl"] = float(len(batch.kept) - to_sft)
    return out


def generated_lengths(batch: RolloutBatch, experts: str | None) -> list[int]:
    """The prompt + response length of every sequence the step's generation compute counts: every
    rollout of every draw (Eq. 22, 25) and, for LUFFY / SRFT, the expert trajectories too, as Eq. 24's
    F_gen = [(B G) S_on + (B N) S_off] F_fwd counts them (LUFFY's rollout runs the expert through the
    engine as a prefix)."""
    return [len(g.prompt_ids) + len(t.response_ids) for g in batch.generated for t in g.trajectories
            if not t.expert or experts == "mixed"]


def flops_counts(batch: RolloutBatch, generated: list[int]) -> dict[str, float]:
    """The sequence counts and token totals (prompt + response) behind the step's FLOPs, so Eq. 22 /
    24 / 27 can be recomputed from the log: generated, trained on-policy and trained expert."""
    on = [len(g.prompt_ids) + len(t.response_ids) for g in batch.kept for t in g.trajectories if not t.expert]
    off = [len(g.prompt_ids) + len(t.response_ids) for g in batch.kept for t in g.trajectories if t.expert]
    return {
        "flops/gen_sequences": float(len(generated)), "flops/gen_tokens": float(sum(generated)),
        "flops/on_sequences": float(len(on)), "flops/on_tokens": float(sum(on)),
        "flops/off_sequences": float(len(off)), "flops/off_tokens": float(sum(off)),
    }


def step_metrics(batch: RolloutBatch, reward_stats: dict, reward_before: dict, timer: Stopwatch, seconds: float,
                 step_flops: float) -> dict[str, float]:
    """The step's reward-pool counts (summed over the ranks), stage times, compute and generation rate."""
    counts = {k: float(v - reward_before.get(k, 0)) for k, v in reward_stats.items()}  # this step's counts
    row = {f"reward/{k}": v for k, v in sum_over_ranks(counts).items()}
    row.update({f"time/{k}_s": v for k, v in timer.seconds.items()})
    row["time/step_s"] = seconds
    row["train/step_flops"] = step_flops
    generated = sum(len(t.response_ids) for g in batch.generated for t in g.trajectories)
    row["rollout/tokens_per_s"] = generated / max(1e-9, timer.seconds["rollout"])
    return row

