"""The Ray driver: place one worker per device on a Ray cluster and run the job's ranks there.

    connect (a running cluster, or a local one) -> a placement group with one bundle per device
    (the device layer's Ray resource: NPU or GPU; CPU bundles on CPU) -> one worker actor per
    bundle -> rank 0's address and a free port -> every worker sets RANK / WORLD_SIZE / LOCAL_RANK /
    MASTER_ADDR / MASTER_PORT and runs the same trainer a single process runs (it joins
    torch.distributed with the device layer's backend) -> rank 0's result comes back.

A worker that raises ends the job at once: the driver kills the other workers (they would wait on
a collective until its timeout) and raises :class:`WorkerFailed` carrying the failed rank's
traceback. The placement group is removed and a Ray instance the driver started is shut down,
whatever happens.
"""

from __future__ import annotations

import os
from typing import Any

from npu_retu.errors import UserError

TASKS = ("sft", "rl")


class WorkerFailed(UserError):
    """A rank raised; the message holds its traceback."""


def connect(address: str) -> bool:
    """Connect to Ray; returns True when this call started a local instance (to shut down later).

    ``address`` "local" starts a private instance on this machine; "auto" or host:port joins a
    running cluster (started by ``scripts/launch.sh`` or ``ray start``).
    """
    try:
        import ray
    except ImportError as e:
        raise UserError(f"cluster.launcher=ray needs Ray: {e} (pip install 'npu-retu[distributed]')") from None
    if ray.is_initialized():
        return False
    if address == "local":
        ray.init(include_dashboard=False, log_to_driver=True, configure_logging=False)
        return True
    try:
        ray.init(address=address, log_to_driver=True, configure_logging=False)
    except ConnectionError as e:
        raise UserError(
            f"no Ray cluster at cluster.ray_address={address!r}: {e}. Start one with scripts/launch.sh (or "
            "`ray start --head`), or set cluster.ray_address=local to start a private one here"
        ) from None
    return False


def worker_count(cluster_cfg: Any, backend: Any, cluster_resources: dict[str, float]) -> int:
    """How many ranks: ``cluster.num_workers``, else one per device of the cluster."""
    if cluster_cfg.num_workers > 0:
        return cluster_cfg.num_workers
    if backend.ray_resource and cluster_resources.get(backend.ray_resource, 0) >= 1:
        return int(cluster_resources[backend.ray_resource])
    raise UserError(
        f"cluster.num_workers=0 means one worker per device, but the Ray cluster has no "
        f"{backend.ray_resource or 'device'} resource ({_format_resources(cluster_resources)}); set cluster.num_workers"
    )


def _format_resources(resources: dict[str, float]) -> str:
    shown = {k: v for k, v in resources.items() if not k.startswith("node:") and "memory" not in k}
    return ", ".join(f"{k}={v:g}" for k, v in sorted(shown.items())) or "no resources"


class TrainWorker:
    """One rank. Ray turns this class into an actor (``ray.remote(TrainWorker)``)."""

    def __init__(self, rank: int, world_size: int):
        self.rank = rank
        self.world_size = world_size

    def address(self) -> tuple[str, int]:
        """This node's IP and a free port on it (used from rank 0 only)."""
        import ray

        from npu_retu.distributed.process_group import free_port

        ip = ray.util.get_node_ip_address()
        return ip, free_port("0.0.0.0")

    def run(self, task: str, config: dict[str, Any], master_addr: str, master_port: int, resume: bool, overwrite: bool) -> dict[str, Any]:
        # Ray narrowed this actor's visible devices to its own one, so its local device is 0.
        os.environ.update({
            "RANK": str(self.rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_RANK": "0",
            "MASTER_ADDR": master_addr,
            "MASTER_PORT": str(master_port),
        })
        from npu_retu.config import Config, from_dict

        cfg = from_dict(Config, config, prefix="")
        cfg.cluster.launcher = "local"  # inside the worker this process is one rank
        cfg.validate()
        try:
            if task == "sft":
                from npu_retu.trainer.sft import train_sft

                result = train_sft(cfg, resume=resume, overwrite=overwrite, quiet=self.rank != 0)
                return {"run_dir": str(result.run_dir), "steps": result.steps, "flops": result.flops,
                        "picked_step": result.picked_step,
                        "picked_checkpoint": str(result.picked_checkpoint) if result.picked_checkpoint else None}
            from npu_retu.trainer.rl import train_rl

            result = train_rl(cfg, resume=resume, overwrite=overwrite)
            return {"run_dir": str(result.run_dir), "steps": result.steps, "flops": result.flops}
        finally:
            from npu_retu.distributed.process_group import destroy_process_group

            destroy_process_group()


def run_on_ray(task: str, cfg: Any, *, resume: bool = False, overwrite: bool = False, say=print) -> dict[str, Any]:
    """Run ``task`` ('sft' or 'rl') as ``cluster.num_workers`` ranks on Ray; returns rank 0's summary."""
    if task not in TASKS:
        raise UserError(f"the Ray driver runs one of {', '.join(TASKS)}, not {task!r}")
    from npu_retu.device import get_backend, set_backend

    if cfg.run.device != "auto":
        set_backend(cfg.run.device)
    backend = get_backend()
    started_here = connect(cfg.cluster.ray_address)
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    group, workers = None, []
    try:
        n = worker_count(cfg.cluster, backend, ray.cluster_resources())
        bundles = [backend.ray_bundle(cfg.cluster.cpus_per_worker) for _ in range(n)]
        group = placement_group(bundles, strategy=cfg.cluster.placement_strategy)
        if not _wait_ready(group, timeout_s=cfg.cluster.timeout_s):
            raise UserError(
                f"the Ray cluster cannot place {n} workers of {bundles[0]} with strategy {cfg.cluster.placement_strategy} "
                f"(it has {_format_resources(ray.cluster_resources())}); lower cluster.num_workers or add nodes"
            )
        actor = ray.remote(TrainWorker)
        # Ray's own Python path handling: workers import npu_retu from the same installation.
        for rank in range(n):
            options = backend.ray_actor_options(cfg.cluster.cpus_per_worker)
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(placement_group=group, placement_group_bundle_index=rank)
            options["max_restarts"] = 0
            workers.append(actor.options(**options).remote(rank, n))
        master_addr, free = ray.get(workers[0].address.remote())
        master_port = cfg.cluster.master_port or free
        say(f"ray: {n} workers placed ({bundles[0]} each, {cfg.cluster.placement_strategy}); rank 0 at {master_addr}:{master_port}, "
            f"collectives over {backend.dist_backend}")
        config = cfg.to_dict()
        futures = [w.run.remote(task, config, master_addr, master_port, resume, overwrite) for w in workers]
        results = _gather(futures)
        return results[0]
    finally:
        for w in workers:
            try:
                ray.kill(w, no_restart=True)
            except Exception:
                pass
        if group is not None:
            try:
                remove_placement_group(group)
            except Exception:
                pass
        if started_here:
            ray.shutdown()


def _wait_ready(group: Any, timeout_s: float) -> bool:
    import ray

    ready, _ = ray.wait([group.ready()], timeout=timeout_s)
    return bool(ready)


def _gather(futures: list[Any]) -> list[Any]:
    """Results in rank order; the first rank to fail ends the job with its traceback."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    rank_of = {f: i for i, f in enumerate(futures)}
    results: dict[int, Any] = {}
    pending = list(futures)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        ref = done[0]
        rank = rank_of[ref]
        try:
            results[rank] = ray.get(ref)
        except RayTaskError as e:
            raise WorkerFailed(f"rank {rank} of {len(futures)} failed:\n{_traceback_text(e)}") from None
        except RayActorError as e:
            raise WorkerFailed(f"rank {rank} of {len(futures)} died (process lost: out of memory, killed, or a crash): {e}") from None
    return [results[i] for i in range(len(futures))]


def _traceback_text(error: Exception) -> str:
    """The worker's own traceback as Ray carries it, without terminal colour codes."""
    import re

    text = getattr(error, "traceback_str", None) or str(error)
    return re.sub(r"\x1b\[[0-9;]*m", "", text).rstrip()
