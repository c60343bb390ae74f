"""RL with verifiable rewards: GRPO, DAPO_d and DAPO_dc (paper §3.2, Eq. 2-4; Appendix B).

One plain loop, top to bottom; each RL step is

    draw prompts -> rollout.generate (n per prompt) -> reward (process pool) -> group advantages
    (Eq. 2) -> dynamic-sampling filter, refilling until the train batch is full or the draw budget
    ends -> old log-probs (no grad) -> for each PPO epoch and mini-batch: log-probs -> clipped
    policy loss (Eq. 3-4) -> optimizer step -> rollout.sync_weights

with held-out evaluation every ``rl.eval_every`` steps, so every run yields (cumulative RL compute,
score) points for the ceiling fit (Eq. 11-12). Compute follows Appendix C, Eq. 22: every generated
sequence costs one forward pass, every trained sequence three per PPO epoch.

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

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from npu_retu.config import Config
from npu_retu.errors import UserError
from npu_retu.trainer.run_folder import check_resume_config, open_run_folder, record_config


@dataclass
class RLResult:
    run_dir: Path
    steps: int
    flops: float  # RL compute (Eq. 22), from the start of this RL run
    evals: list[dict[str, Any]] = field(default_factory=list)  # one per evaluation point
    final_checkpoint: Path | None = None


@dataclass
class Group:
    """One prompt's n rollouts with their rewards (what dynamic sampling keeps or drops)."""

    prompt_index: int
    prompt_ids: list[int]
    trajectories: list[Any]  # npu_retu.rollout.Trajectory
    rewards: list[float]


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


def rollout_seed(run_seed: int, step: int, draw: int, rank: int = 0) -> int:
    """The sampling seed of one generation batch (of one rank's share of it): a pure function of
    where it is in the run."""
    return (run_seed * 1_000_003 + step * 1_009 + draw + rank * 7_919_993) % (2**31)


def evaluate_sharded(rollout, tokenizer, examples: list, reward_fn, ranks, **settings):
    """:func:`npu_retu.eval.runner.evaluate` with the problems split over the ranks and the scores
    gathered: every rank returns the result over all of ``examples``."""
    from npu_retu.distributed.process_group import all_gather_objects
    from npu_retu.eval.runner import evaluate, merge_results

    mine = examples[ranks.rank :: ranks.world_size]
    part = evaluate(rollout, tokenizer, mine, reward_fn, **settings) if mine else None
    if not ranks.distributed:
        return part
    # shard r holds problems r, r + W, ...; ranks past the last problem evaluated nothing
    return merge_results([p for p in all_gather_objects(part) if p is not None], ks=settings.get("ks", (1,)))


def check_rl_scale(cfg: Config) -> None:
    """Refuse what the RL trainer cannot do, clearly, before anything is loaded."""
    if cfg.engine.name == "deepspeed" and cfg.engine.zero_stage == 3:
        raise UserError(
            "engine.zero_stage=3 with RL: the rollout generates with the training model, and under ZeRO-3 every "
            "decoded token would gather all the weights (and ranks decode different lengths); use zero_stage 1 or 2"
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
    from npu_retu.device import get_backend, set_backend
    from npu_retu.distributed import process_group as pg

    check_rl_scale(cfg)
    if cfg.run.device != "auto":
        set_backend(cfg.run.device)
    backend = get_backend()
    ranks = pg.init_process_group(backend, cfg.cluster.timeout_s)
    say = (lambda *a: None) if quiet or not ranks.is_main else (lambda *a: print(*a, flush=True))
    folder = open_run_folder(cfg.run.output_dir, cfg.run.name, resume=resume, overwrite=overwrite, is_main=ranks.is_main)
    try:
        return _train_rl(cfg, folder.path, ranks, backend, say, resume=resume, reward=reward, save_checkpoints=save_checkpoints)
    finally:
        folder.release()


def _train_rl(cfg: Config, run_dir: Path, ranks, backend, say, *, resume: bool, reward: Any, save_checkpoints: bool) -> RLResult:
    from npu_retu.algos import fill_batch
    from npu_retu.data.errors import BadRowCounter
    from npu_retu.distributed import process_group as pg
    from npu_retu.engine import build_engine
    from npu_retu.flops import ModelShape
    from npu_retu.modeling import load_model, load_tokenizer
    from npu_retu.report.metrics import MetricsLogger, NullLogger, write_json_atomic
    from npu_retu.reward import make_reward
    from npu_retu.rollout import SamplingParams, TransformersRollout
    from npu_retu.trainer import checkpoint as ckpt

    rl, algo = cfg.rl, cfg.rl.algo
    pg.barrier()  # rank 0 has prepared the folder
    resume_from = ckpt.latest_checkpoint(run_dir) if resume else None
    changes = check_resume_config(cfg, run_dir, say=say) if resume_from is not None else {}
    pg.barrier()  # every rank has read the saved config before rank 0 replaces it
    if ranks.is_main:
        record_config(cfg, run_dir, changes, at=resume_from.name if resume_from else None)
    pg.barrier()
    backend.manual_seed(cfg.run.seed)

    trust = cfg.model.trust_remote_code
    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.path, trust_remote_code=trust)
    model = load_model(str(resume_from) if resume_from else cfg.model.path, cfg.model.dtype, cfg.model.attn_implementation,
                       trust_remote_code=trust)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()

    reference_model = None
    if algo.kl_coef > 0:  # the starting policy, frozen (never the resumed weights)
        reference_model = load_model(cfg.model.path, cfg.model.dtype, cfg.model.attn_implementation, trust_remote_code=trust)
        reference_model = reference_model.to(backend.device()).eval()
        reference_model.requires_grad_(False)

    counter = BadRowCounter()
    prompts, examples = load_rl_prompts(rl.train_files, tokenizer, rl.max_prompt_length, cfg.data.skip_bad_rows, counter)
    test_examples = load_eval_examples(cfg, counter)
    sampler = PromptSampler(len(examples), cfg.run.seed, cfg.data.shuffle)
    optimizer_steps = rl.max_steps * rl.ppo_epochs * (rl.train_batch_prompts // rl.mini_batch_prompts)
    seqs_per_rank = -(-rl.mini_batch_prompts * algo.n // ranks.world_size)
    engine = build_engine(
        cfg, model, total_steps=optimizer_steps, backend=backend, world_size=ranks.world_size,
        micro_batch_size=rl.micro_batch_size, grad_accum_steps=-(-seqs_per_rank // rl.micro_batch_size), optim=rl.optim,
    )
    rollout = TransformersRollout(engine.model, tokenizer, batch_size=rl.rollout.batch_size)
    shape = ModelShape.from_hf_config(model.config)
    gen_batch = rl.gen_batch_prompts if algo.dynamic_sampling else rl.train_batch_prompts
    max_draws = algo.max_draws if algo.dynamic_sampling else 1

    step, flops, elapsed, evals = 0, 0.0, 0.0, []
    if resume_from is not None:
        state = ckpt.load_trainer_state(resume_from)
        engine.load_state_dict(state["engine"])
        engine.load_engine_files(resume_from)
        sampler.load_state_dict(state["sampler"])
        backend.set_rng_state(state["rng"])
        step, flops, elapsed, evals = state["step"], state["flops"], state["elapsed"], state["evals"]
        say(f"rl: resumed from {resume_from} (step {step})")
    logger = MetricsLogger(run_dir, resume_step=step if resume_from is not None else None) if ranks.is_main else NullLogger()
    say(
        f"rl: {rl.algorithm} on {len(examples)} prompts, {rl.max_steps} steps of {rl.train_batch_prompts} prompts x "
        f"{algo.n} samples, evaluation on {len(test_examples)} problems every {rl.eval_every} steps, device {backend.name}, "
        f"engine {cfg.engine.name}" + (f", {ranks.world_size} ranks ({backend.dist_backend})" if ranks.distributed else "")
    )

    if reward is None:
        reward = make_reward(rl.reward.name, num_workers=rl.reward.num_workers, timeout_s=rl.reward.timeout_s)

    def run_eval(at_step: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        e = cfg.eval
        result = evaluate_sharded(
            rollout,
            tokenizer,
            test_examples,
            reward.score,
            ranks,
            n=e.n,
            temperature=e.temperature,
            top_p=e.top_p,
            max_new_tokens=e.max_new_tokens or rl.max_response_length,
            seed=e.seed,
            ks=tuple(e.ks),
        )
        point = {"step": at_step, "flops": flops, **result.to_dict(), "summary": result.summary(), "seconds": time.perf_counter() - t0}
        if ranks.is_main:
            write_json_atomic(run_dir / "eval" / f"step-{at_step:06d}.json", point)
        summary = {k: v for k, v in point.items() if k != "scores"}
        logger.log(at_step, flops, {f"eval/{k}": v for k, v in summary.items() if isinstance(v, (int, float)) and k not in ("step", "flops")})
        say(f"rl: eval at step {at_step}: {result.summary()}")
        return summary

    def compute_spent(total: float) -> bool:
        # rl.max_flops: a compute budget (Appendix C FLOPs) for compute-matched comparisons
        return rl.max_flops > 0 and total >= rl.max_flops

    try:
        if step == 0 and rl.eval_at_start and test_examples:
            evals.append(run_eval(0))
        while step < rl.max_steps and not compute_spent(flops):
            timings = {"rollout": 0.0, "reward": 0.0, "logprobs": 0.0, "update": 0.0}
            reward_before = reward.stats()
            t_step = time.perf_counter()
            generated: list[Group] = []
            draw_index = [0]  # draws so far in this step (part of the sampling seed)

            def draw() -> list[Group]:
                # one generation batch: gen_batch prompts x n samples, scored; every rank draws the
                # same prompts and generates every world_size-th of them
                indices = sampler.take(gen_batch)
                mine = indices[ranks.rank :: ranks.world_size]
                params = SamplingParams(
                    n=algo.n,
                    temperature=rl.rollout.temperature,
                    top_p=rl.rollout.top_p,
                    max_new_tokens=rl.max_response_length,
                    seed=rollout_seed(cfg.run.seed, step, draw_index[0], ranks.rank),
                )
                draw_index[0] += 1
                groups = []
                if mine:
                    t0 = time.perf_counter()
                    trajectories = rollout.generate([prompts[i] for i in mine], params)
                    timings["rollout"] += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    rewards = reward.score([(t.text, examples[mine[t.prompt_index]].ground_truth) for t in trajectories])
                    timings["reward"] += time.perf_counter() - t0
                    groups = [
                        Group(
                            prompt_index=i,
                            prompt_ids=prompts[i],
                            trajectories=trajectories[j * algo.n : (j + 1) * algo.n],
                            rewards=rewards[j * algo.n : (j + 1) * algo.n],
                        )
                        for j, i in enumerate(mine)
                    ]
                groups = pg.interleave(pg.all_gather_objects(groups))  # back in the order of `indices`
                generated.extend(groups)
                return groups

            kept, ds_stats = fill_batch(
                draw, rl.train_batch_prompts, max_draws, algo.n, filter=algo.dynamic_sampling
            )
            row: dict[str, Any] = {}
            row.update(rollout_metrics(generated, kept))
            row.update({f"ds/{k}": float(v) for k, v in ds_stats.items()})
            gen_lens = [len(g.prompt_ids) + len(t.response_ids) for g in generated for t in g.trajectories]
            train_lens: list[int] = []
            if kept:
                update_metrics, train_lens = policy_update(
                    engine, kept, cfg, timings, pad_id=tokenizer.pad_token_id, seed=rollout_seed(cfg.run.seed, step, 997),
                    reference_model=reference_model, ranks=ranks,
                )
                row.update(update_metrics)
                row["train/tokens"] = float(rl.ppo_epochs * sum(train_lens))
                rollout.sync_weights(engine.model)
            else:  # the draw budget ended with nothing to learn from: count the step, skip the update
                row["train/skipped_update"] = 1.0
            backend.synchronize()
            step_flops = rl_step_flops(shape, gen_lens, train_lens, rl.ppo_epochs)
            step += 1
            flops += step_flops
            dt = time.perf_counter() - t_step
            elapsed += dt
            reward_stats = reward.stats()
            step_counts = {k: float(v - reward_before.get(k, 0)) for k, v in reward_stats.items()}  # this step's counts
            row.update({f"reward/{k}": v for k, v in zip(step_counts, pg.all_reduce_sum(list(step_counts.values())))})
            row.update({f"time/{k}_s": v for k, v in timings.items()})
            row["time/step_s"] = dt
            row["train/step_flops"] = step_flops
            row["rollout/tokens_per_s"] = sum(len(t.response_ids) for g in generated for t in g.trajectories) / max(1e-9, timings["rollout"])
            logger.log(step, flops, row)
            say(
                f"rl step {step:>4}  acc {row['rollout/accuracy']:.3f}  kept {ds_stats['groups_kept']}/{ds_stats['groups_generated']} "
                f"in {ds_stats['draws']} draws  len {row['rollout/response_length_mean']:.0f}  "
                f"clip {row.get('actor/clipfrac', 0.0):.3f}  {dt:.1f}s"
            )

            last_step = step == rl.max_steps or compute_spent(flops)
            if rl.eval_every > 0 and test_examples and (step % rl.eval_every == 0 or last_step):
                evals.append(run_eval(step))
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
                ckpt.save_checkpoint(
                    run_dir, step, lambda d: engine.save_pretrained(d, tokenizer, is_main=ranks.is_main), state,
                    write_engine_files=engine.save_engine_files, ranks=ranks,
                )
                if ranks.is_main:
                    ckpt.prune_checkpoints(run_dir, rl.keep_checkpoints)
    finally:
        reward.close()
        logger.close()

    if counter.skipped:
        say(counter.summary())
        if ranks.is_main:
            say(f"rl: every skipped row is listed in {counter.write(run_dir / 'skipped_rows.jsonl')}")
    if ranks.is_main:
        write_json_atomic(run_dir / "evals.json", evals)
    pg.barrier()
    return RLResult(run_dir=run_dir, steps=step, flops=flops, evals=evals, final_checkpoint=ckpt.latest_checkpoint(run_dir))


# --------------------------------------------------------------------------------------------
# the update


def policy_update(
    engine, kept: list[Group], cfg: Config, timings: dict[str, float], *, pad_id: int, seed: int, reference_model=None,
    ranks=None,
) -> tuple[dict[str, float], list[int]]:
    """Advantages (Eq. 2), old log-probs, then PPO epochs of clipped-loss mini-batch steps (Eq. 3-4).

    With several ranks (``ranks``) every rank holds all of ``kept`` and trains on every
    world_size-th sequence of each mini-batch; the loss is normalised by the mini-batch's global
    token and sequence counts and the engine sums the gradients, so the update equals one process's.
    Returns the averaged metrics (over all ranks) and the token length of every trained sequence.
    """
    import torch

    from npu_retu.algos import ADVANTAGE_ESTIMATORS
    from npu_retu.distributed import process_group as pg
    from npu_retu.distributed.process_group import RankInfo

    ranks = ranks or RankInfo()

    rl, algo = cfg.rl, cfg.rl.algo
    temperature = rl.rollout.temperature
    estimator = ADVANTAGE_ESTIMATORS[algo.adv_estimator]
    sequences, advantages, rollout_logps = [], [], []
    for g in kept:
        rewards = torch.tensor(g.rewards, dtype=torch.float32).view(1, -1)
        adv = estimator(rewards, normalize_std=algo.normalize_std).view(-1)
        for t, a in zip(g.trajectories, adv.tolist()):
            sequences.append((g.prompt_ids, t.response_ids))
            advantages.append(a)
            rollout_logps.append(t.logprobs)
    lengths = [len(p) + len(r) for p, r in sequences]
    device = engine.device

    # Which rank trains which sequence, decided up front (the same on every rank): the shuffled
    # order of each PPO epoch, cut into mini-batches, every world_size-th sequence to a rank.
    order_rng = random.Random(seed)
    seqs_per_mini = rl.mini_batch_prompts * algo.n
    epochs = []
    for _epoch in range(rl.ppo_epochs):
        order = list(range(len(sequences)))
        order_rng.shuffle(order)
        epochs.append(_chunks(order, seqs_per_mini))
    my_sequences = sorted({i for minis in epochs for mini in minis for i in mini[ranks.rank :: ranks.world_size]})

    # old log-probs: the policy that generated the samples, before any update of this step
    t0 = time.perf_counter()
    old_logps: dict[int, torch.Tensor] = {}
    ref_logps: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for chunk in _chunks(my_sequences, rl.micro_batch_size):
            batch = make_rl_batch([sequences[i] for i in chunk], pad_id, device)
            old_logps.update(zip(chunk, sequence_logprobs(engine.model, batch, temperature, rl.kernels)))
            if reference_model is not None:
                ref_logps.update(zip(chunk, sequence_logprobs(reference_model, batch, temperature, rl.kernels)))
    timings["logprobs"] += time.perf_counter() - t0
    drift = [
        (old_logps[i] - torch.tensor(rollout_logps[i], dtype=torch.float32)).abs().mean().item()
        for i in my_sequences
        if len(rollout_logps[i]) > 0
    ]

    t0 = time.perf_counter()
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    loss_totals: dict[str, float] = {}
    optimizer_steps = 0

    def add(metrics: dict[str, float], weight: int = 1) -> None:
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v) * weight
            counts[k] = counts.get(k, 0) + weight

    for minis in epochs:
        for mini in minis:
            global_tokens = sum(len(sequences[i][1]) for i in mini)
            micros = _chunks(mini[ranks.rank :: ranks.world_size], rl.micro_batch_size)
            # a rank with no sequence in this mini-batch still joins the gradient reduction: one
            # forward/backward on the mini-batch's first sequence, with weight 0
            weight = 1.0 if micros else 0.0
            micros = micros or [[mini[0]]]
            for number, micro in enumerate(micros):
                batch = make_rl_batch([sequences[i] for i in micro], pad_id, device)
                width = batch["input_ids"].shape[1] - 1
                mask = torch.zeros((len(micro), width), dtype=torch.float32, device=device)
                old = torch.zeros((len(micro), width), dtype=torch.float32, device=device)
                ref = torch.zeros((len(micro), width), dtype=torch.float32, device=device) if ref_logps else None
                for row, i in enumerate(micro):
                    start, end = batch["response_spans"][row]
                    mask[row, start - 1 : end - 1] = 1.0
                    if i in old_logps:  # (the zero-weight stand-in has no old log-probs here)
                        old[row, start - 1 : end - 1] = old_logps[i].to(device)
                    if ref is not None and i in ref_logps:
                        ref[row, start - 1 : end - 1] = ref_logps[i].to(device)
                adv = torch.tensor([advantages[i] for i in micro], dtype=torch.float32, device=device)  # one per sequence
                counts_kw = {"global_token_count": global_tokens, "global_seq_count": len(mini)}
                loss, metrics = micro_batch_loss(engine.model, batch, mask, old, adv, ref, cfg, counts_kw)
                engine.backward(loss * weight, last=number == len(micros) - 1)
                tokens = int(metrics.pop("tokens"))
                for key in MINI_BATCH_SUMS:  # each micro-batch holds its share of the mini-batch loss
                    if key in metrics:
                        loss_totals[key] = loss_totals.get(key, 0.0) + weight * metrics.pop(key)
                add(metrics, weight=tokens if weight else 0)  # (every rank must know the same names)
            add(engine.step())
            optimizer_steps += 1
    timings["update"] += time.perf_counter() - t0

    # token-weighted means over the step's micro-batches of every rank (grad_norm / lr, the same on
    # every rank: mean over optimizer steps)
    names, loss_names = sorted(sums), sorted(loss_totals)
    totals = pg.all_reduce_sum(
        [sums[k] for k in names] + [counts[k] for k in names] + [loss_totals[k] for k in loss_names] + [sum(drift), len(drift)]
    )
    sums = dict(zip(names, totals[: len(names)]))
    counts = dict(zip(names, totals[len(names) : 2 * len(names)]))
    loss_totals = dict(zip(loss_names, totals[2 * len(names) : 2 * len(names) + len(loss_names)]))
    drift_sum, drift_count = totals[-2:]
    out = {f"actor/{k}": sums[k] / max(1, counts[k]) for k in sums}
    out.update({f"actor/{k}": v / max(1, optimizer_steps) for k, v in loss_totals.items()})  # mean mini-batch loss
    out["actor/logprob_drift"] = drift_sum / max(1, drift_count)  # mean |logp_trainer - logp_rollout|
    out["actor/advantage_abs_mean"] = sum(abs(a) for a in advantages) / max(1, len(advantages))
    return out, lengths


# metrics that are a micro-batch's share of the mini-batch's loss (normalised by the mini-batch's
# global token count): summed over the mini-batch's micro-batches (and ranks), not averaged
MINI_BATCH_SUMS = ("pg_loss", "kl_ref")


def sequence_logprobs(model, batch: dict[str, Any], temperature: float, kernels: str) -> list:
    """Each row's response-token log-probs at ``temperature`` (no grad), as a list of 1-D CPU tensors.

    On the fused path only the response positions reach the LM head, and no ``[B, S, V]`` logits
    are built; ``unfused`` takes them from the model's full forward.
    """
    import torch

    from npu_retu.algos.logprobs import hidden_states_and_head, response_logprobs
    from npu_retu.kernels import fused_linear_logprobs

    spans = batch["response_spans"]
    if kernels == "unfused":
        logp, _ = response_logprobs(model, batch["input_ids"], batch["attention_mask"], temperature=temperature)
        return [logp[row, start - 1 : end - 1].cpu() for row, (start, end) in enumerate(spans)]
    hidden, head = hidden_states_and_head(model, batch["input_ids"], batch["attention_mask"])
    width = batch["input_ids"].shape[1] - 1
    mask = torch.zeros((len(spans), width), dtype=torch.bool, device=hidden.device)
    for row, (start, end) in enumerate(spans):
        mask[row, start - 1 : end - 1] = True
    logp = fused_linear_logprobs(
        hidden[:, :-1][mask], head, batch["input_ids"][:, 1:][mask], temperature=temperature,
        impl=None if kernels == "auto" else kernels,
    )[0]
    return list(logp.cpu().split([end - start for start, end in spans]))


def micro_batch_loss(model, batch, mask, old, adv, ref, cfg: Config, counts_kw: dict[str, Any]):
    """One micro-batch's loss (clipped policy loss, + beta KL, - entropy bonus) and its metrics.

    With no KL and no entropy bonus (GRPO / DAPO as the paper ran them) the fused path goes from the
    hidden states to the loss in one kernel call (``fused_linear_policy_loss``); otherwise it takes
    differentiable fused log-probs and entropy, then the fused loss; ``unfused`` is the plain path.
    """
    from npu_retu.algos import agg_loss, clipped_policy_loss, kl_penalty
    from npu_retu.algos.logprobs import hidden_states_and_head, response_logprobs
    from npu_retu import kernels

    rl, algo = cfg.rl, cfg.rl.algo
    temperature = rl.rollout.temperature
    impl = None if rl.kernels == "auto" else rl.kernels
    clip = {"eps_low": algo.clip_low, "eps_high": algo.clip_high, "clip_ratio_c": algo.dual_clip,
            "log_ratio_clamp": algo.log_ratio_clamp, "agg": algo.loss_agg, **counts_kw}
    ids, attention = batch["input_ids"], batch["attention_mask"]
    if rl.kernels != "unfused" and ref is None and algo.entropy_coef == 0:
        hidden, head = hidden_states_and_head(model, ids, attention)
        loss, metrics = kernels.fused_linear_policy_loss(
            hidden[:, :-1], head, ids[:, 1:], old, adv, mask, temperature=temperature, return_entropy=True, impl=impl, **clip
        )
        return loss, {**metrics, "pg_loss": float(loss.detach())}
    if rl.kernels == "unfused":
        logp, entropy = response_logprobs(
            model, ids, attention, temperature=temperature, with_entropy=True, entropy_grad=algo.entropy_coef > 0
        )
        loss, metrics = clipped_policy_loss(
            logp, old, adv, mask, clip_low=clip["eps_low"], clip_high=clip["eps_high"], dual_clip=clip["clip_ratio_c"],
            log_ratio_clamp=clip["log_ratio_clamp"], agg=clip["agg"], **counts_kw,
        )
    else:
        hidden, head = hidden_states_and_head(model, ids, attention)
        logp, entropy = kernels.fused_linear_logprobs(
            hidden[:, :-1], head, ids[:, 1:], temperature=temperature, return_entropy=True, impl=impl
        )
        if algo.entropy_coef == 0:
            entropy = entropy.detach()
        loss, metrics = kernels.clipped_policy_loss(logp, old, adv, mask, impl=impl, **clip)
    metrics = {**metrics, "pg_loss": float(loss.detach())}
    if ref is not None:  # beta * KL(pi || pi_ref), Eq. 3's penalty, with the chosen estimator
        kl = agg_loss(kl_penalty(logp, ref, kind=algo.kl_kind), mask, algo.loss_agg, **counts_kw)
        loss = loss + algo.kl_coef * kl
        metrics["kl_ref"] = float(kl.detach())
    if algo.entropy_coef > 0:  # an entropy bonus lowers the loss
        loss = loss - algo.entropy_coef * agg_loss(entropy, mask, algo.loss_agg, **counts_kw)
    metrics["entropy"] = float((entropy.detach() * mask).sum() / max(1.0, float(mask.sum())))
    return loss, metrics


def rl_step_flops(shape, generated_lengths: list[int], trained_lengths: list[int], ppo_epochs: int = 1) -> float:
    """Compute of one RL step by Appendix C, Eq. 22: every generated sequence (all K draws) costs one
    forward pass, every trained sequence three per PPO epoch, each token at F_fwd(mean length).

    With K draws of B_gen x G sequences and B_train x G trained ones, all of length S, this is
    (K B_gen + 3 B_train) G S F_fwd(S), Eq. 22 exactly. The no-grad old-log-prob pass is not in
    Eq. 22 and is not counted.
    """
    from npu_retu.flops import tokens_flops

    flops = tokens_flops(shape, generated_lengths, passes=1) if generated_lengths else 0.0
    if trained_lengths:
        flops += ppo_epochs * tokens_flops(shape, trained_lengths, passes=3)
    return flops


def make_rl_batch(sequences: list[tuple[list[int], list[int]]], pad_id: int, device) -> dict[str, Any]:
    """Right-padded ``prompt + response`` rows; ``response_spans[i]`` is ``(start, end)`` of row i's response."""
    import torch

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


# --------------------------------------------------------------------------------------------
# data and metrics


def load_rl_prompts(files: list[str], tokenizer, max_prompt_length: int, skip_bad_rows: bool, counter):
    """Prompt token ids and examples; a prompt longer than ``max_prompt_length`` is an error (or a counted skip)."""
    from npu_retu.data.errors import DataError
    from npu_retu.data.schemas import load_rl
    from npu_retu.data.tokenize import tokenize_prompt
    from npu_retu.modeling import resolve_path

    examples = load_rl([resolve_path(f) for f in files], skip_bad_rows=skip_bad_rows, counter=counter)
    prompts, kept = [], []
    for ex in examples:
        ids = tokenize_prompt(ex.prompt, tokenizer)
        if len(ids) > max_prompt_length:
            message = f"prompt has {len(ids)} tokens, more than rl.max_prompt_length={max_prompt_length}"
            if skip_bad_rows:
                counter.skip(ex.source, "prompt longer than rl.max_prompt_length", field="prompt", message=message)
                continue
            raise DataError(f"{ex.source}: field 'prompt': {message}")
        prompts.append(ids)
        kept.append(ex)
    if not kept:
        raise UserError(f"no RL prompts left in {files}")
    return prompts, kept


def load_eval_examples(cfg: Config, counter) -> list:
    from npu_retu.data.schemas import load_rl
    from npu_retu.modeling import resolve_path

    if not cfg.eval.files:
        return []
    examples = load_rl([resolve_path(f) for f in cfg.eval.files], skip_bad_rows=cfg.data.skip_bad_rows, counter=counter)
    if cfg.eval.max_problems:
        examples = examples[: cfg.eval.max_problems]
    return examples


def rollout_metrics(generated: list[Group], kept: list[Group]) -> dict[str, float]:
    """Reward / accuracy over everything generated this step, lengths, and the share cut at the limit."""
    trajectories = [t for g in generated for t in g.trajectories]
    rewards = [r for g in generated for r in g.rewards]
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

