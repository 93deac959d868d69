"""The per-step loop: one run (an "arm") advances one optimizer step at a time.

An arm knows the DLB bookkeeping (which ids are new, which are carried, the teacher cache
in chunk order), the optimizer, its own RNG streams and its checkpoint (checkpoint.py). It
knows nothing about the data or the model head: its task (tasks.py) tokenizes, runs the
forward pass, packs the teacher cache and computes metrics. experiment.py runs several arms
in lockstep and decides, at one place, when an arm evaluates and saves a checkpoint (as
nanoGPT's loop does); `Arm.step` is the optimizer step only.

Order of one step (`Arm.step`), as in nanoGPT's train.py:
  batch -> teacher lookup -> forward -> loss parts -> backward/clip/step
  -> record this step's logits as next step's teacher -> the step's record
"""
from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager

import torch

from dynsdpb.engine import checkpoint
from dynsdpb.engine import dist
from dynsdpb.config import RunConfig
from dynsdpb.errors import BUG_HINT, NAN_HINT, OOM_HINT, ConfigError, TrainingFault
from dynsdpb.engine.layout import BatchLayout
from dynsdpb.engine.task import View
from dynsdpb.engine.dist import pick_device
from dynsdpb.records import RECORD_KEYS
from dynsdpb.engine.schedules import describe
from dynsdpb.store import (MetricsWriter, NullWriter, RunDir, append_jsonl, atomic_write_json,
                    truncate_jsonl)


def get_lr(step: int, cfg: RunConfig) -> float:
    """Learning rate at 0-based `step`: linear warmup, then linear decay to 0."""
    warm = int(cfg.warmup_ratio * cfg.steps)
    # 1) linear warmup from lr/warm to lr
    if step < warm:
        return cfg.lr * (step + 1) / warm
    # 2) linear decay to 0 at the last step
    decay = (step - warm) / max(1, cfg.steps - warm)
    assert 0.0 <= decay <= 1.0
    return cfg.lr * (1.0 - decay)


def is_oom(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(e, oom):
        return True
    msg = str(e).lower()
    # CUDA/MPS say "out of memory"; torch's CPU allocator says "can't allocate memory".
    return isinstance(e, RuntimeError) and ("out of memory" in msg
                                            or "can't allocate memory" in msg)


# Test-only: "RANK:STEP" makes that rank raise inside that 1-based step, before its forward
# pass; "RANK:STEP:after" after its optimizer step; "RANK:0:start" in the evaluation before
# the first step (eval_on_start); "RANK:STEP:late" makes that rank take 3 s to act on a fault
# the ranks agreed on in that step. Comma-separated: several. Tests fail data-parallel ranks
# with it; never set it for real runs.
TEST_FAIL_ENV = "DYNSDPB_TEST_FAIL_RANK_STEP"


def _test_fault_at() -> set[tuple[int, int, str]]:
    out = set()
    for spec in filter(None, os.environ.get(TEST_FAIL_ENV, "").split(",")):
        rank, step, *where = spec.split(":")
        out.add((int(rank), int(step), (where or ["forward"])[0]))
    return out


def _compiled(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """torch.compile(model); refused with the reason where inductor cannot build it (no
    torch.compile; on CPU, no C++ compiler for its kernels)."""
    if not hasattr(torch, "compile"):
        raise ConfigError.one("compile", True, f"this torch ({torch.__version__}) has no "
                              "torch.compile; turn compile off or upgrade torch")
    if device.type == "cpu":
        import shutil
        if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
            raise ConfigError.one("compile", True, "torch.compile on the CPU needs a C++ "
                                  "compiler (g++ or clang++) and none is installed; install "
                                  "one or turn compile off")
    return torch.compile(model)


def _to_host(vals: dict, device: torch.device) -> dict:
    """`vals` with its tensors (0-dim) as Python numbers, read in one transfer: one stack and
    one `.tolist()`. float64 holds every fp32/fp16 value and count exactly, so each number
    equals `float(t)` (MPS has no float64; its values are fp32 at most)."""
    keys = [k for k, v in vals.items() if isinstance(v, torch.Tensor)]
    if not keys:
        return dict(vals)
    dtype = torch.float32 if device.type == "mps" else torch.float64
    got = torch.stack([vals[k].detach().reshape(()).to(device, dtype) for k in keys]).tolist()
    return {**vals, **dict(zip(keys, got))}


def _describe_fault(e: BaseException, step: int) -> tuple[str, str]:
    """(error, hint) of an exception inside a step, as the run's status reports them."""
    if isinstance(e, TrainingFault):
        return str(e), e.hint
    if is_oom(e):
        return f"out of memory at step {step}", OOM_HINT
    return f"{type(e).__name__}: {e}", BUG_HINT


class Arm:
    """One run of one config: model, optimizer, batch layout and the teacher cache."""

    def __init__(self, cfg: RunConfig, task, run_dir: RunDir,
                 device: torch.device | None = None, resume: bool = False):
        self.cfg = cfg
        self.task = task            # tasks.SequenceClassification, ... (shared by the arms)
        self.rd = run_dir
        self.device = device or pick_device(cfg)
        self.schedule = cfg.resolved_schedule
        n = len(task.train)
        # Data parallel (torchrun / accelerate launch; dist.py): this rank's shard of every
        # global chunk, its own carried half and teacher cache. One process: rank 0 of 1.
        self.dist = dist.current()
        # Set when a fault on this rank alone left its collectives out of step with the other
        # ranks' (experiment.run_arms): this process must then end without another collective.
        self.out_of_step = False
        self._test_fail = _test_fault_at()
        self.layout = BatchLayout(n, cfg.chunk_size, cfg.seed, distill=cfg.distills,
                                  rank=self.dist.rank, world=self.dist.world)
        # Probe set for probe_drift: fixed training samples, the same for every arm.
        self.probe_ids = list(range(min(cfg.probe_size, n)))

        # The model's new head (or LoRA adapter) is drawn from the seed, so vanilla and dynsdpb
        # arms with the same seed start from identical weights. The run folder's name
        # (method-s<seed>) names the arm, e.g. its adapter on a shared decoder base.
        torch.manual_seed(cfg.seed)
        self.model = task.build_model(cfg, run_dir.id)
        self.model.to(self.device).train()
        # The training forward goes through DDP (gradients averaged over ranks; rank 0's
        # initial weights broadcast); evaluation and no-grad passes use the bare model, so
        # they need no collective.
        self.train_model = self.model
        if self.dist.active:
            import inspect

            from torch.nn.parallel import DistributedDataParallel as DDP
            # no buffer sync per forward (the ranks' buffers never diverge here); the name of
            # that switch changed in torch 2.13
            nosync = ({"forward_sync_buffers": False}
                      if "forward_sync_buffers" in inspect.signature(DDP).parameters
                      else {"broadcast_buffers": False})
            self.train_model = DDP(self.model, device_ids=[self.device.index]
                                   if self.device.type == "cuda" else None, **nosync)
        if cfg.compile:
            # The training forward only: self.model stays the plain module, so checkpoints and
            # saved models hold its state_dict (no `_orig_mod.` prefixes) and evaluation runs
            # it uncompiled.
            self.train_model = _compiled(self.train_model, self.device)
        decay = [p for n_, p in self.model.named_parameters() if p.ndim >= 2]
        no_decay = [p for n_, p in self.model.named_parameters() if p.ndim < 2]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
        self.use_amp = self.device.type == "cuda"
        # Own RNG streams (dropout): arms do not disturb each other, resume is exact.
        gen = torch.Generator().manual_seed(cfg.seed + 7919 + 104729 * self.dist.rank)
        self.rng_state = gen.get_state()
        self.cuda_rng_state = None
        if self.device.type == "cuda":
            self.cuda_rng_state = self._fresh_cuda_rng(cfg.seed + 7919 + 104729 * self.dist.rank)

        self.step_idx = 0           # completed steps
        self.samples_seen = 0
        self.wall_time = 0.0
        # The teacher cache: what the task packed for this step's new chunk (logits, with
        # alpha/tau fixed at that moment), in chunk order, which is the order of the next
        # step's carried half. Not a dict by sample id: a chunk that straddles an epoch can
        # hold one id twice, and each copy must teach with its own logits.
        self.cache: list = []
        # Which training set this arm trains on (tasks without one, e.g. causal LM: None);
        # a checkpoint keeps it and a resume on other data is refused.
        self.data_fp = getattr(task.data, "train_fingerprint", None)
        self.probe_prev: torch.Tensor | None = None
        self.last_eval: dict = {}
        # Drift split (update_drift, dropout_drift at evaluations; method.md §7): the step
        # before an evaluation keeps its batch ids, the RNG state of its dropout masks and the
        # no-dropout outputs of its new chunk. Tasks without `drift_of` (decoders) skip it.
        self.split_prev: dict | None = None
        # The step a resumed arm continued from (None: it started at step 0).
        self.resumed_from = self.load_checkpoint() if resume else None
        # Records after the checkpoint (or all of them, when starting over) are dropped: the
        # file then equals what an uninterrupted run would have written up to here.
        # Only rank 0 writes the run folder; other ranks' records go to it through `log`.
        self.writer = (MetricsWriter(run_dir.metrics_path,
                                     truncate_after_step=self.resumed_from or 0)
                       if self.dist.main else NullWriter())
        for p in (run_dir.samples_path, run_dir.tokens_path):   # decoders' eval-time logs
            if self.dist.main:
                truncate_jsonl(p, self.resumed_from or 0)
        # The carried sample's per-token alpha/KD of the last step, kept for its evaluation.
        self.token_view: dict | None = None

    # -- RNG isolation ------------------------------------------------------------------
    def _fresh_cuda_rng(self, seed: int) -> torch.Tensor:
        saved = torch.cuda.get_rng_state(self.device)
        torch.cuda.manual_seed(seed)
        st = torch.cuda.get_rng_state(self.device)
        torch.cuda.set_rng_state(saved, self.device)
        return st

    @contextmanager
    def rng(self):
        """Inside the block the global RNG is this arm's; on leaving it, the arm keeps the
        advanced state (what a checkpoint saves) and the caller's state comes back."""
        saved = torch.get_rng_state()
        saved_cuda = (torch.cuda.get_rng_state(self.device)
                      if self.cuda_rng_state is not None else None)
        torch.set_rng_state(self.rng_state)
        if self.cuda_rng_state is not None:
            torch.cuda.set_rng_state(self.cuda_rng_state, self.device)
        try:
            yield
        finally:
            self.rng_state = torch.get_rng_state()
            torch.set_rng_state(saved)
            if self.cuda_rng_state is not None:
                self.cuda_rng_state = torch.cuda.get_rng_state(self.device)
                torch.cuda.set_rng_state(saved_cuda, self.device)

    # -- one step -----------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.step_idx >= self.cfg.steps

    @property
    def eval_due(self) -> bool:
        return self.step_idx % self.cfg.eval_every == 0 or self.done

    def _evaluates_after(self, t: int) -> bool:
        """Does 0-based step t end with an evaluation (eval_due once it is done)?"""
        return (t + 1) % self.cfg.eval_every == 0 or t + 1 >= self.cfg.steps

    def _rng_now(self) -> tuple:
        return (torch.get_rng_state(),
                torch.cuda.get_rng_state(self.device) if self.cuda_rng_state is not None
                else None)

    @torch.no_grad()
    def _forward_nograd(self, batch, train_mode: bool, rng: tuple | None = None):
        """Logits of `batch` without a graph: eval mode (no dropout), or train mode with the
        dropout masks of a saved RNG state (the caller's RNG state comes back after)."""
        saved = self._rng_now() if rng is not None else None
        if rng is not None:
            torch.set_rng_state(rng[0])
            if rng[1] is not None:
                torch.cuda.set_rng_state(rng[1], self.device)
        self.model.train(train_mode)
        try:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
                return self.task.forward(self.model, batch).float()
        finally:
            self.model.train()
            if saved is not None:
                torch.set_rng_state(saved[0])
                if saved[1] is not None:
                    torch.cuda.set_rng_state(saved[1], self.device)

    def _test_fault(self, step: int, where: str) -> None:
        if (self.dist.rank, step, where) in self._test_fail:
            raise RuntimeError(f"{TEST_FAIL_ENV}: injected fault on rank {self.dist.rank} "
                               f"at step {step}")

    @contextmanager
    def _ranks_agree(self, step: int):
        """Data parallel: every rank leaves the block, or every rank raises the same
        TrainingFault naming the lowest rank that raised in it and its reason. The cost per
        step is one 1-element all-reduce (`Dist.first_failed`), the one that already checked
        the loss for non-finite values; the reason travels (one all_gather_object) only after
        a fault. One process: nothing is added, an exception passes through as it is."""
        err = None
        try:
            yield
        except Exception as e:  # noqa: BLE001 - every fault must reach the other ranks
            if not self.dist.active:
                raise
            err = e
        if not self.dist.active:
            return
        bad = self.dist.first_failed(err is not None)
        if bad is None:
            return
        reasons = self.dist.gather(None if err is None else _describe_fault(err, step))
        error, hint = reasons[bad]
        if (self.dist.rank, step, "late") in self._test_fail:
            time.sleep(3)
        fault = TrainingFault(f"{error} (on rank {bad} of {self.dist.world})", hint, step)
        fault.all_ranks = True    # every rank raised it at the same collective
        raise fault from err

    def _view(self, step: int) -> View | None:
        """The views a training forward at `step` (1-based) draws; None with views off."""
        return View(self.cfg.seed, step) if self.cfg.augment != "none" else None

    @property
    def checkpoint_due(self) -> bool:
        every = self.cfg.checkpoint_every
        return self.done or bool(every and self.step_idx % every == 0)

    def step(self) -> dict:
        """One optimizer step; returns its record (not yet written: see `log`)."""
        with self.rng():
            try:
                return self._step()
            except TrainingFault:
                raise
            except Exception as e:
                if is_oom(e):
                    self.opt.zero_grad(set_to_none=True)
                    if self.device.type == "cuda":
                        torch.cuda.empty_cache()
                    raise TrainingFault(f"out of memory at step {self.step_idx + 1}", OOM_HINT,
                                        self.step_idx + 1) from e
                raise

    def _step(self) -> dict:
        cfg, task, t = self.cfg, self.task, self.step_idx
        t0 = time.perf_counter()
        # Steps 1-4 end at one agreement of the ranks (`_ranks_agree`), before the backward
        # pass and its gradient all-reduce: a fault on one rank (a bad batch, out of memory, a
        # non-finite loss) fails this arm on every rank with that rank's reason, instead of
        # leaving the others waiting in the all-reduce until the launcher's timeout.
        with self._ranks_agree(t + 1):
            self._test_fault(t + 1, "forward")
            # 1) batch: the carried half (new at step t-1) first, then this step's new chunk
            #    (views on: each sample's own view of this step, so the carried half is seen
            #    through another view than the one its soft target came from)
            b = self.layout.batch(t)
            batch = task.batch(task.train, b.ids, self.device, self._view(t + 1))
            n_car = len(b.carried)

            # 2) teacher: what these carried samples got one step ago, with alpha/tau fixed then
            #    (position j of the carried half is position j of last step's new chunk)
            entries = self.cache
            assert len(entries) == n_car, (len(entries), n_car)
            teacher = task.unpack(entries, batch, self.device) if n_car else None

            # 3) forward, all samples in one pass (DLB concatenates the two halves too)
            lr = get_lr(t, cfg)
            for g in self.opt.param_groups:
                g["lr"] = lr
            split = cfg.distills and hasattr(task, "drift_of")
            rng_fwd = self._rng_now() if split and self._evaluates_after(t + 1) else None
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
                logits = task.forward(self.train_model, batch)
            logits = logits.float()   # CUDA bf16 autocast: the loss and the KD math run in fp32
            # 3b) drift split, at steps that end with an evaluation (no grad, same weights as the
            #     forward, before the update; the dropout RNG stream is left as it was):
            #     update_drift = KL(no-dropout output of the carried half one step ago || now);
            #     dropout_drift = KL(last step's batch re-run now with last step's dropout masks
            #     || this step's train-mode output). Frozen weights: logit_drift = dropout_drift;
            #     no dropout: logit_drift = update_drift.
            drift_parts = {}
            prev = self.split_prev
            if split and n_car and self._evaluates_after(t) and prev is not None:
                pb = task.batch(task.train, prev["ids"], self.device, self._view(t))
                now_eval = self._forward_nograd(batch, False)[:n_car]
                replay = self._forward_nograd(pb, True, (prev["rng"], prev["cuda_rng"]))
                cur = logits[:n_car].detach().float()
                drift_parts = {"update_drift": task.drift_of(prev["eval_new"], now_eval),
                               "dropout_drift": task.drift_of(replay[prev["n_car"]:], cur)}
            if rng_fwd is not None:   # the next step evaluates: keep what its split needs
                self.split_prev = {"ids": list(b.ids), "n_car": n_car, "rng": rng_fwd[0],
                                   "cuda_rng": rng_fwd[1],
                                   "eval_new": self._forward_nograd(batch, False)[n_car:].cpu()}
            # 3c) the teacher for the next step: this forward's new-chunk logits (DLB), or with
            #     teacher_mode eval [ours] one more no-grad forward of the new chunk without
            #     dropout (same weights, before the update)
            teach_logits, teach_labels = logits[n_car:], batch.labels[n_car:]
            if cfg.distills and t + 1 < cfg.steps and cfg.teacher_mode == "eval":
                nb = task.batch(task.train, b.new, self.device, self._view(t + 1))
                teach_logits, teach_labels = self._forward_nograd(nb, False), nb.labels

            # 4) loss parts: CE on all, alpha * tau^2 * KL on the positions with a teacher
            parts = task.loss(logits, batch, teacher)
            # Data parallel: the ranks agree on a non-finite loss before the gradient
            # all-reduce (one more host read). One process: the check is in 5b, in the step's
            # one transfer to the host.
            if self.dist.active and not bool(torch.isfinite(parts.total)):
                raise TrainingFault(f"loss is {float(parts.total.detach())} at step {t + 1}",
                                    NAN_HINT, t + 1)

        # 5) backward, clip, step
        self.opt.zero_grad(set_to_none=True)
        parts.total.backward()
        params = [p for p in self.model.parameters() if p.grad is not None]
        if cfg.grad_clip > 0:
            gn = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        else:
            gn = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
        # 5b) the step's numbers, read to the host at once (one device sync per step instead
        #     of one per number), before the update: a non-finite loss or gradient norm must
        #     not reach the weights
        stats = {"loss": parts.total, "ce": parts.ce, "kd": parts.kd, "grad_norm": gn}
        if n_car:
            stats.update(task.signal_record(entries, parts))
        if parts.alpha.numel():  # (a decoder's alignment can leave no token to distil)
            stats.update(alpha=parts.alpha.mean(), alpha_lo=parts.alpha.min(),
                         alpha_hi=parts.alpha.max(), tau=parts.tau.mean(),
                         tau_lo=parts.tau.min(), tau_hi=parts.tau.max(),
                         logit_drift=parts.logit_drift.mean())
        stats = _to_host(stats, self.device)
        if not math.isfinite(stats["loss"]):
            raise TrainingFault(f"loss is {stats['loss']} at step {t + 1}", NAN_HINT, t + 1)
        if not math.isfinite(stats["grad_norm"]):
            raise TrainingFault(f"gradient norm is {stats['grad_norm']} at step {t + 1}",
                                NAN_HINT, t + 1)
        self.opt.step()
        self._test_fault(t + 1, "after")

        # 6) this step's logits for the new chunk teach at step t+1. They come from this same
        #    forward pass, before the update (DLB: pre_out = out); the task detaches them.
        self.cache = []
        if cfg.distills and t + 1 < cfg.steps:
            self.cache = list(task.pack(cfg, teach_logits, teach_labels, t + 1))

        # 7) the record of what was actually used
        self.step_idx += 1
        self.samples_seen += len(b.ids)
        dt = time.perf_counter() - t0
        self.wall_time += dt
        rec = dict.fromkeys(RECORD_KEYS)
        rec.update(step=self.step_idx, epoch=round(b.epoch, 4), method=cfg.method,
                   schedule=self.schedule, seed=cfg.seed, lr=lr, samples_seen=self.samples_seen,
                   samples_per_s=len(b.ids) / max(dt, 1e-9), wall_time=round(self.wall_time, 3))
        rec.update(stats)
        if n_car:
            rec.update(kd_cache_bytes=sum(v.numel() * v.element_size()
                                          for e in entries for v in e.values()))
        rec.update(drift_parts)
        # Decoders: the first carried sample's tokens with their alpha and KD, for the
        # evaluation that follows this step (tokens.jsonl); encoders have none.
        self.token_view = None
        if n_car and self.eval_due:
            view = task.token_view(batch, parts)
            self.token_view = None if view is None else {"step": self.step_idx,
                                                         "sample": b.carried[0], **view}
        return rec

    def start_record(self) -> dict:
        """The record of step 0 (eval_on_start): bookkeeping only; the evaluation fills in
        the validation metrics of the untrained model."""
        rec = dict.fromkeys(RECORD_KEYS)
        rec.update(step=0, epoch=0.0, method=self.cfg.method, schedule=self.schedule,
                   seed=self.cfg.seed, samples_seen=0, wall_time=0.0)
        return rec

    def log(self, rec: dict) -> dict:
        """Write the step's record; with several ranks, one record reduced over them."""
        rec = dist.reduce_record(self.dist.gather(rec))
        rec["time"] = time.time()  # when the record hits the file (the app measures its lag)
        self.writer.write(rec)
        return rec

    # -- evaluation ---------------------------------------------------------------------
    def evaluate(self) -> dict:
        """Validation metrics and probe_drift (the task computes them); a decoder's sample
        generations to samples.jsonl, and the carried sample's tokens to tokens.jsonl."""
        out, self.probe_prev = self.task.evaluate(self.model, self.probe_ids, self.probe_prev,
                                                  self.device, self.use_amp)
        self.last_eval = out
        if self.dist.main:
            append_jsonl(self.rd.samples_path,
                         [{"step": self.step_idx, **s} for s in self.task.samples])
            if self.token_view is not None:
                append_jsonl(self.rd.tokens_path, [self.token_view])
        return out

    # -- checkpoint (checkpoint.py: what a checkpoint holds, how it is written and read) ----
    def save_checkpoint(self) -> None:
        checkpoint.save(self)

    def load_checkpoint(self) -> int:
        return checkpoint.load(self)

    # -- end of run ---------------------------------------------------------------------
    def write_summary(self) -> dict:
        """Test metrics of the final model into summary.json."""
        task = self.task
        test = task.test_metrics(self.model, self.device, self.use_amp)
        summary = {
            "run": self.rd.id, "method": self.cfg.method, "schedule": self.schedule,
            "formula": describe(self.cfg, task.name), "seed": self.cfg.seed,
            "task": task.name, "primary_metric": task.primary_metric,
            "labels": task.data.label_names, "steps": self.step_idx,
            "samples_seen": self.samples_seen, "wall_time": round(self.wall_time, 2),
            "train_size": len(task.train), "val_size": len(task.val),
            "test_size": len(task.test), "data_source": task.data.source,
            "dedup": getattr(task.data, "dedup", None) or None,
            "label_noise": self.cfg.label_noise,
            "labels_flipped": getattr(task.data, "flipped", 0),
            "teacher_mode": self.cfg.teacher_mode,
            "device": str(self.device),
            **{k: v for k, v in self.last_eval.items() if k.startswith("val_")}, **test,
        }
        if self.dist.main:
            atomic_write_json(self.rd.summary_path, summary)
        return summary

    def save_model(self) -> None:
        if not self.dist.main:
            return
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
        self.model.save_pretrained(self.rd.model_path, safe_serialization=True)
        self.task.tokenizer.save_pretrained(self.rd.model_path)
