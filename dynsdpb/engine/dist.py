"""More than one device: data parallel under `torchrun` or `accelerate launch` (issue #12).

    torchrun --nproc_per_node 2 -m dynsdpb.cli compare ...        (CPU: gloo; GPUs: nccl)
    accelerate launch --num_processes 2 -m dynsdpb.cli compare ...

One process per device. Each rank takes its shard of every global chunk
(layout.BatchLayout(rank, world)) and keeps its own carried half and teacher cache, so the
DLB invariant holds per rank. Gradients are averaged by DistributedDataParallel. A step's
record is reduced over the ranks (means of the per-rank means, lowest of the lows, highest of
the highs, sums of counts); rank 0 alone writes metrics, status, checkpoints and the model.
A checkpoint holds every rank's cache and RNG state, so a resume with the same world size
continues exactly; another world size is refused.

A fault on one rank reaches the others at once: before the backward pass every rank says
whether its step so far went well (`first_failed`, the one small all-reduce a step costs), so
they all fail that arm with the failing rank's reason. A fault later in the step ends the
failing process, and the others see its connections close (gloo) or the launcher stops them.

Without the launcher's environment (WORLD_SIZE unset or 1) everything here is a no-op.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

# torch is imported where a collective runs: a single process (and the CLI's start) never
# pays for it here.


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    # -- collectives (no-ops in a single process) ----------------------------------------
    def barrier(self) -> None:
        if self.active:
            import torch.distributed as torch_dist
            torch_dist.barrier()

    def gather(self, obj) -> list:
        """Every rank's `obj`, in rank order, on every rank (picklable objects)."""
        if not self.active:
            return [obj]
        import torch.distributed as torch_dist
        out: list = [None] * self.world
        torch_dist.all_gather_object(out, obj)
        return out

    def _flag_device(self):
        """Where a collective's small tensor lives: nccl reduces CUDA tensors only."""
        import torch
        import torch.distributed as torch_dist
        if torch_dist.get_backend() == "nccl":
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def all_true(self, flag: bool) -> bool:
        """True on every rank only if `flag` is true on every rank."""
        return self.first_failed(not flag) is None

    def first_failed(self, failed: bool) -> int | None:
        """The lowest rank on which `failed` is true (every rank gets the same answer), or
        None when it is false everywhere. One 1-element all-reduce (MIN over the ranks, each
        giving its rank if it failed and `world` if not); no collective in one process."""
        if not self.active:
            return self.rank if failed else None
        import torch
        import torch.distributed as torch_dist
        t = torch.tensor([self.rank if failed else self.world], dtype=torch.int64,
                         device=self._flag_device())
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MIN)
        r = int(t.item())
        return None if r >= self.world else r

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank."""
        if not self.active:
            return obj
        import torch.distributed as torch_dist
        box = [obj]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]


_STATE = Dist()


def current() -> Dist:
    return _STATE


def init() -> Dist:
    """Join the process group the launcher set up (idempotent); a single process otherwise.
    GPUs: nccl, one per rank (LOCAL_RANK); CPU processes: gloo."""
    global _STATE
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return _STATE
    import torch
    import torch.distributed as torch_dist
    if not torch_dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch_dist.init_process_group(backend=backend)
    _STATE = Dist(rank=torch_dist.get_rank(), world=torch_dist.get_world_size(),
                  local_rank=int(os.environ.get("LOCAL_RANK", "0") or 0))
    return _STATE


# How the keys of a step record combine over ranks (records.py names them).
_SUM = ("samples_seen", "samples_per_s", "kd_cache_bytes")
_MIN = ("alpha_lo", "tau_lo")
_MAX = ("alpha_hi", "tau_hi", "wall_time")
_SAME = ("step", "time", "epoch", "method", "schedule", "seed", "lr", "grad_norm")


def reduce_record(recs: list[dict]) -> dict:
    """One record from every rank's record of the same step. Shards are equal in size, so the
    mean of the per-rank means is the global mean."""
    if len(recs) == 1:
        return recs[0]
    out = dict(recs[0])
    for k, v in recs[0].items():
        vals = [r.get(k) for r in recs]
        if k in _SAME or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                 for x in vals):
            continue
        if k in _SUM:
            out[k] = sum(vals)
        elif k in _MIN:
            out[k] = min(vals)
        elif k in _MAX:
            out[k] = max(vals)
        else:
            out[k] = sum(vals) / len(vals)
    return out


def pick_device(cfg):
    """The device a run trains on: `cfg.device` (auto, cpu, cuda), one GPU per data-parallel rank."""
    import torch

    from dynsdpb.errors import ConfigError
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError.one("device", "cuda", "no CUDA device is available here; use auto or cpu")
    if cfg.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", current().local_rank)
