"""DLB batch layout (method.md §1; DLB reference `dlb.py`).

The shuffled training order is an endless stream: epoch e is a permutation of the training
ids drawn from (seed, e). The stream is cut into chunks of `chunk_size` new ids.

    vanilla  step t trains on chunk[t]                    (chunk_size = batch_size)
    dlb/dyn  step t trains on chunk[t-1] + chunk[t]       (carried half first, then new)

So every sample is seen in two consecutive steps: first as new (its logits are recorded as
`prev_logits`), then as carried (distilled toward them). Step 0 has no carried half and
trains with CE only. Like DLB's code, the chain runs on across epoch boundaries.

DLB builds the overlap by concatenation rather than a special sampler; so do we. Everything
here is a pure function of (n, seed, chunk_size, step), which makes resuming trivial.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@lru_cache(maxsize=64)
def epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    rng = np.random.default_rng([seed, epoch, 0x5D1B])
    return tuple(int(i) for i in rng.permutation(n))


def stream_slice(n: int, seed: int, start: int, stop: int) -> list[int]:
    """Positions [start, stop) of the endless shuffled stream of ids 0..n-1."""
    out = []
    pos = start
    while pos < stop:
        epoch, off = divmod(pos, n)
        order = epoch_order(n, seed, epoch)
        take = min(stop - pos, n - off)
        out.extend(order[off:off + take])
        pos += take
    return out


@dataclass(frozen=True)
class StepBatch:
    step: int            # 0-based optimizer step
    carried: list[int]   # ids re-fed from the previous step (distilled)
    new: list[int]       # ids seen for the first time in this pass (their logits are recorded)
    epoch: float         # position in the data, in epochs, after this step's new chunk

    @property
    def ids(self) -> list[int]:
        return self.carried + self.new


class BatchLayout:
    """Which sample ids each step trains on. `distill=False` gives the vanilla layout.

    Data parallel (`world` > 1, one process per device): the global chunk k holds
    `chunk_size * world` ids and rank r takes every world-th of them, starting at r. A rank's
    carried half is its own previous new shard, so the DLB invariant holds per rank, and the
    ranks together train on exactly the samples of a single process with a `world` times
    larger batch."""

    def __init__(self, n: int, chunk_size: int, seed: int, distill: bool, rank: int = 0,
                 world: int = 1):
        if n < 1 or chunk_size < 1:
            raise ValueError("need n >= 1 and chunk_size >= 1")
        if not 0 <= rank < world:
            raise ValueError("need 0 <= rank < world")
        self.n, self.chunk_size, self.seed, self.distill = n, chunk_size, seed, distill
        self.rank, self.world = rank, world

    def chunk(self, k: int) -> list[int]:
        c = self.chunk_size * self.world
        return stream_slice(self.n, self.seed, k * c, (k + 1) * c)[self.rank::self.world]

    def batch(self, step: int) -> StepBatch:
        new = self.chunk(step)
        carried = self.chunk(step - 1) if (self.distill and step > 0) else []
        # epochs of the whole data set (all ranks together)
        return StepBatch(step, carried, new, (step + 1) * self.chunk_size * self.world / self.n)

    def samples_seen(self, steps: int) -> int:
        """Forward passes over training samples after `steps` steps."""
        if steps <= 0:
            return 0
        carried = (steps - 1) * self.chunk_size if self.distill else 0
        return steps * self.chunk_size + carried
