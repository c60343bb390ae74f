"""torch.distributed among the ranks of one job, with the device layer's collectives backend.

A rank learns its place from the usual environment variables (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), whoever set them: the Ray driver's worker
actors (npu_retu.distributed.ray_driver), torchrun, or the deepspeed launcher. With no
``WORLD_SIZE`` (or 1) the job is this one process and nothing is initialised.

Reductions are SUMs: HCCL has no AVG all-reduce on every version, so a mean is a sum divided here.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Sequence

from npu_retu.errors import UserError


@dataclass(frozen=True)
class RankInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int, environ) -> int:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"environment variable {name}={raw!r} is not an integer") from None


def rank_info_from_env(environ=None) -> RankInfo:
    """This process's rank, world size and local rank from the environment (defaults: one process)."""
    environ = os.environ if environ is None else environ
    world_size = _env_int("WORLD_SIZE", 1, environ)
    rank = _env_int("RANK", 0, environ)
    local_rank = _env_int("LOCAL_RANK", 0, environ)
    if world_size < 1 or not 0 <= rank < world_size:
        raise UserError(f"RANK={rank} and WORLD_SIZE={world_size} do not describe a rank of a job")
    if world_size > 1:
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not environ.get(name)]
        if missing:
            raise UserError(f"WORLD_SIZE={world_size} but {' and '.join(missing)} not set: rank 0's address is unknown")
    return RankInfo(rank=rank, world_size=world_size, local_rank=local_rank)


def init_process_group(backend: Any, timeout_s: float = 1800.0, environ=None) -> RankInfo:
    """Join the job's process group with ``backend.dist_backend`` (gloo / nccl / hccl).

    Binds this process to device ``LOCAL_RANK`` first (on an accelerator), as nccl and hccl need.
    Safe to call twice; a single-process job initialises nothing.
    """
    info = rank_info_from_env(environ)
    if not info.distributed:
        return info
    import torch.distributed as dist

    # A worker placed by Ray sees only its own device(s): its local rank then indexes those.
    backend.set_device(info.local_rank % max(1, backend.device_count()))
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend.dist_backend,
            rank=info.rank,
            world_size=info.world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    return info


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def ensure_single_process_group(backend: Any, timeout_s: float = 1800.0) -> None:
    """A process group of one on localhost, unless one exists: DeepSpeed needs a group even when
    the job is a single process."""
    if is_initialized():
        return
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    for key, value in env.items():
        os.environ.setdefault(key, value)
    import torch.distributed as dist

    dist.init_process_group(backend=backend.dist_backend, rank=0, world_size=1, timeout=datetime.timedelta(seconds=timeout_s))


def is_initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def all_reduce_sum(values: Sequence[float], device: Any = None) -> list[float]:
    """Sum a few numbers over all ranks (float64); the identity when not distributed."""
    if not is_initialized():
        return [float(v) for v in values]
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return [float(v) for v in tensor.cpu()]


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` when not distributed."""
    if not is_initialized():
        return [obj]
    import torch.distributed as dist

    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def interleave(per_rank: list[list[Any]]) -> list[Any]:
    """Undo the round-robin split ``items[rank::world_size]``: rank r's j-th item was item r + j*W."""
    out: list[Any] = []
    for j in range(max((len(part) for part in per_rank), default=0)):
        out.extend(part[j] for part in per_rank if j < len(part))
    return out


def all_reduce_gradients(parameters, world_size: int) -> None:
    """Sum every gradient over the ranks (in one flat buffer per dtype and device).

    A parameter without a gradient on this rank (a rank that trained on nothing this step) takes
    part with zeros, so that every rank reduces the same buffers.
    """
    if world_size <= 1 or not is_initialized():
        return
    import torch
    import torch.distributed as dist

    parameters = [p for p in parameters if p.requires_grad]
    for p in parameters:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in parameters]
    groups: dict[tuple, list] = {}
    for g in grads:
        groups.setdefault((g.dtype, g.device), []).append(g)
    for group in groups.values():
        flat = torch.cat([g.reshape(-1) for g in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for g in group:
            n = g.numel()
            g.copy_(flat[offset : offset + n].view_as(g))
            offset += n


def barrier() -> None:
    if is_initialized():
        import torch.distributed as dist

        dist.barrier()


def destroy_process_group() -> None:
    if is_initialized():
        import torch.distributed as dist

        dist.destroy_process_group()
