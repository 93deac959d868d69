"""An arm's checkpoint: what it holds, how it is written and how a resume reads it back.

One file per run (`RunDir.checkpoint_path`), written by rank 0: the weights, the optimizer,
the step counters, the RNG streams after the last step (a resume does not replay its dropout
masks), the carried half's teacher cache, the training set's fingerprint, and, with several
ranks, every rank's own cache and RNG state. It is written to a temporary file and renamed,
so a crash mid-save leaves the previous checkpoint intact, and read with
`weights_only=True`: plain tensors and numbers, never arbitrary pickles. A resume on another
training set or another world size is refused with the fix.
"""
from __future__ import annotations

import io

import torch

from dynsdpb.errors import NAN_HINT, ConfigError, TrainingFault
from dynsdpb.store import atomic_write_bytes


def save(arm) -> None:
    """Write the arm's checkpoint (rank 0 writes one file holding every rank's part)."""
    # Never overwrite the last good checkpoint with non-finite weights (an update can
    # overflow with a finite loss and gradient; the next loss would catch it too late).
    if not all(bool(torch.isfinite(p).all()) for p in arm.model.parameters()):
        raise TrainingFault(f"weights became non-finite at step {arm.step_idx}",
                            NAN_HINT, arm.step_idx)
    arm.writer.sync()   # the records up to this step are on disk before it claims them
    # Each rank's own part (its carried half's teachers, its dropout stream), gathered so
    # that rank 0's one file resumes every rank.
    own = {"rng": arm.rng_state,
           "cuda_rng": arm.cuda_rng_state.cpu() if arm.cuda_rng_state is not None else None,
           "cache": [{k: v.detach().cpu() for k, v in e.items()} for e in arm.cache]}
    ranks = arm.dist.gather(own)
    if not arm.dist.main:
        return
    state = {
        "step": arm.step_idx, "samples_seen": arm.samples_seen, "wall_time": arm.wall_time,
        "model": {k: v.detach().cpu() for k, v in arm.model.state_dict().items()},
        "optimizer": arm.opt.state_dict(),
        # this rank's RNG state after the last step (a resume does not replay its dropout
        # masks) and teacher cache
        **own,
        "data": arm.data_fp,
        "probe_prev": arm.probe_prev, "last_eval": arm.last_eval,
        "split_prev": arm.split_prev,
        "config": arm.cfg.to_dict(),
    }
    if arm.dist.active:
        state["ranks"] = ranks
    buf = io.BytesIO()
    torch.save(state, buf)
    # temp file + rename: a crash mid-save leaves the previous checkpoint intact
    atomic_write_bytes(arm.rd.checkpoint_path, buf.getvalue())
    # ...and leaves its partial temp file behind: sweep those once a save has succeeded
    for tmp in arm.rd.checkpoint_path.parent.glob(f".{arm.rd.checkpoint_path.name}.*.tmp"):
        tmp.unlink(missing_ok=True)


def load(arm) -> int:
    """Restore the arm from its checkpoint; the step it resumes after."""
    p = arm.rd.checkpoint_path
    if not p.is_file():
        raise ConfigError.one("resume", str(arm.rd.path), "this run has no checkpoint to "
                              "resume from; start it again instead")
    # weights_only: a checkpoint is plain tensors and numbers, never arbitrary pickles
    try:
        st = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - damaged, foreign or unsafe: never a traceback
        import pickle
        why = ("it holds objects other than tensors and numbers, which are never unpickled"
               if isinstance(e, pickle.UnpicklingError) else
               f"it is damaged or not a dynsdpb checkpoint ({type(e).__name__})")
        raise ConfigError.one("checkpoint", str(p), f"cannot resume: {why}; start the run "
                              "again (delete its folder)") from None
    _check_data(arm, st.get("data"))
    saved_world = len(st["ranks"]) if "ranks" in st else 1
    if saved_world != arm.dist.world:
        raise ConfigError.one("resume", str(arm.rd.path), f"this checkpoint was written by "
                              f"{saved_world} process(es) and this resume runs "
                              f"{arm.dist.world}; resume with the same world size "
                              f"(torchrun --nproc_per_node {saved_world})")
    if "ranks" in st:
        st.update(st["ranks"][arm.dist.rank])
    arm.model.load_state_dict(st["model"])
    arm.opt.load_state_dict(st["optimizer"])
    arm.step_idx, arm.samples_seen = int(st["step"]), int(st["samples_seen"])
    arm.wall_time = float(st["wall_time"])
    arm.rng_state = st["rng"]
    if arm.cuda_rng_state is not None and st.get("cuda_rng") is not None:
        arm.cuda_rng_state = st["cuda_rng"]
    cache = st["cache"]
    if isinstance(cache, dict):
        # Older checkpoints keyed the cache by sample id: lay it out in the order of the
        # next step's carried half (what those versions looked up).
        cache = [cache[i] for i in arm.layout.batch(arm.step_idx).carried] if cache else []
    arm.cache = [{k: v.to(arm.device) for k, v in e.items()} for e in cache]
    arm.probe_prev = st["probe_prev"]
    arm.last_eval = st.get("last_eval") or {}
    arm.split_prev = st.get("split_prev")
    return arm.step_idx

def _check_data(arm, saved: dict | None) -> None:
    """Refuse to resume on another training set than the checkpoint's. Checkpoints from
    before this check carry none and resume as they did."""
    now = arm.data_fp
    if not saved or not now or saved == now:
        return
    was = f"{saved.get('train_size')} rows, hash {str(saved.get('train_sha256'))[:12]}"
    got = f"{now['train_size']} rows, hash {now['train_sha256'][:12]}"
    raise ConfigError.one("dataset", arm.cfg.dataset, f"the training set differs from the "
                          f"one this checkpoint was trained on ({was} then, {got} now): the "
                          "data file or its split changed. Put the original data back to "
                          "resume, or start a new experiment on the new data")
