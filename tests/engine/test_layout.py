"""DLB batch layout invariants in both budget modes."""
from collections import Counter

import pytest

from dynsdpb.config import RunConfig
from dynsdpb.engine.layout import BatchLayout


@pytest.mark.parametrize("budget", ["epochs", "compute"])
def test_distill_layout_invariants(budget):
    cfg = RunConfig(method="dynsdpb", batch_size=8, budget=budget)
    n, steps = 50, 40
    lay = BatchLayout(n, cfg.chunk_size, seed=3, distill=True)
    assert cfg.chunk_size == (8 if budget == "epochs" else 4)
    batches = [lay.batch(t) for t in range(steps)]
    assert batches[0].carried == []  # first step: CE only
    for t in range(1, steps):
        # exactly one chunk carried: last step's new chunk
        assert batches[t].carried == batches[t - 1].new
        assert len(batches[t].new) == cfg.chunk_size
        forwards = len(batches[t].ids)
        assert forwards == (16 if budget == "epochs" else 8)
    # every stream position is new once and carried once in the next step
    for t in range(steps - 1):
        assert batches[t + 1].carried == batches[t].new
    # coverage: within each full epoch of the stream every id appears exactly once as new
    stream = [i for b in batches for i in b.new]
    for e in range(len(stream) // n):
        assert sorted(stream[e * n:(e + 1) * n]) == list(range(n))
    assert lay.samples_seen(steps) == sum(len(b.ids) for b in batches)


def test_vanilla_uses_same_order_as_new_chunks_in_epochs_mode():
    van = BatchLayout(37, 8, seed=1, distill=False)
    dyn = BatchLayout(37, 8, seed=1, distill=True)
    for t in range(12):
        assert van.batch(t).ids == dyn.batch(t).new
        assert van.batch(t).carried == []


def test_deterministic_and_seed_dependent():
    a = [BatchLayout(30, 4, 0, True).batch(t).ids for t in range(10)]
    b = [BatchLayout(30, 4, 0, True).batch(t).ids for t in range(10)]
    c = [BatchLayout(30, 4, 1, True).batch(t).ids for t in range(10)]
    assert a == b and a != c


def test_chain_runs_across_epoch_boundary():
    lay = BatchLayout(10, 4, 0, True)
    b2, b3 = lay.batch(2), lay.batch(3)  # chunk 2 spans positions 8..11 (epoch 0 -> 1)
    assert b3.carried == b2.new
    assert b2.epoch == pytest.approx(1.2)
    assert Counter(lay.chunk(0) + lay.chunk(1) + lay.chunk(2)[:2]) == Counter(range(10))


def test_ranks_shard_the_global_chunk_and_keep_their_own_carried_half():
    one = BatchLayout(50, 8, seed=2, distill=True)                 # a single process, B = 8
    ranks = [BatchLayout(50, 4, seed=2, distill=True, rank=r, world=2) for r in (0, 1)]
    for t in range(20):
        parts = [lay.batch(t) for lay in ranks]
        # together: exactly the single process's new and carried samples
        assert sorted(parts[0].new + parts[1].new) == sorted(one.batch(t).new)
        assert sorted(parts[0].carried + parts[1].carried) == sorted(one.batch(t).carried)
        for r, lay in enumerate(ranks):
            # per rank: the carried half is this rank's own new shard of the previous step
            assert parts[r].carried == (lay.batch(t - 1).new if t else [])
            assert len(parts[r].new) == 4 and parts[r].epoch == one.batch(t).epoch
    assert BatchLayout(50, 8, 2, True, rank=0, world=1).batch(3) == one.batch(3)
