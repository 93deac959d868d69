"""The training loop: one run (an "arm") advances one optimizer step at a time.

An experiment runs several arms (methods x seeds of one config) in lockstep, round-robin one
step each, in one worker: curves align and arms share the device fairly. Each arm keeps its
own RNG state, so its numbers do not depend on which other arms run beside it, and a resumed
arm reproduces the uninterrupted one.

Order of one step (`Arm.step`), as in nanoGPT's train.py:
  batch -> teacher lookup -> forward -> loss parts -> backward/clip/step
  -> record this step's logits as next step's teacher -> log -> eval -> checkpoint
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import schedules
from .config import RunConfig, check_config
from .data import Split, TaskData, load_data
from .errors import ConfigError, TrainingFault
from .layout import BatchLayout
from .losses import dynsdpb_loss
from .metrics import PRIMARY, classification_metrics, regression_metrics
from .models import build_model, load_tokenizer, pick_device
from .store import MetricsWriter, RunDir, atomic_write_bytes, atomic_write_json

# Every metrics record has exactly these keys (None where not applicable), so the file reads
# as one table (method.md §7).
STEP_KEYS = ("step", "time", "epoch", "method", "schedule", "seed", "loss", "ce", "kd",
             "alpha", "alpha_min", "alpha_max", "tau", "tau_min", "tau_max", "u_mean", "d_mean",
             "logit_drift", "agreement", "lr", "grad_norm", "samples_seen", "samples_per_s",
             "wall_time")
EVAL_KEYS = ("val_accuracy", "val_macro_f1", "val_mcc", "val_pearson", "val_spearman",
             "val_mse", "val_loss", "probe_drift")
RECORD_KEYS = STEP_KEYS + EVAL_KEYS


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


# ----------------------------------------------------------------------------------------
# Data shared by the arms of one experiment (same dataset, tokenizer, max_len)

@dataclass
class Encoded:
    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: np.ndarray


class Prepared:
    """Tokenized splits, built once per experiment."""

    def __init__(self, cfg: RunConfig, data: TaskData | None = None, upload: bytes | None = None):
        self.data = data if data is not None else load_data(cfg, upload)
        self.tokenizer = load_tokenizer(cfg)
        self.max_len = cfg.max_len
        self.train = self._encode(self.data.train)
        self.val = self._encode(self.data.val)
        self.test = self._encode(self.data.test)

    def _encode(self, s: Split) -> Encoded:
        enc = self.tokenizer(s.texts, s.pairs, truncation=True, max_length=self.max_len)
        return Encoded(enc["input_ids"], enc.get("token_type_ids"), s.labels)

    def collate(self, e: Encoded, ids: list[int], device: torch.device) -> dict[str, torch.Tensor]:
        feats = [{"input_ids": e.input_ids[i]} for i in ids]
        if e.token_type_ids is not None:
            for f, i in zip(feats, ids):
                f["token_type_ids"] = e.token_type_ids[i]
        batch = self.tokenizer.pad(feats, return_tensors="pt")
        return {k: v.to(device) for k, v in batch.items()}


# ----------------------------------------------------------------------------------------

def _is_oom(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(e, oom):
        return True
    msg = str(e).lower()
    # CUDA/MPS say "out of memory"; torch's CPU allocator says "can't allocate memory".
    return isinstance(e, RuntimeError) and ("out of memory" in msg
                                            or "can't allocate memory" in msg)


OOM_HINT = "lower batch_size or max_len (or use a smaller model)"
NAN_HINT = "lower lr (e.g. halve it), keep grad_clip on, or lower alpha/alpha_max"


class Arm:
    """One run of one config: model, optimizer, batch layout and the prev_logits cache."""

    def __init__(self, cfg: RunConfig, prep: Prepared, run_dir: RunDir,
                 device: torch.device | None = None, resume: bool = False):
        self.cfg = cfg
        self.prep = prep
        self.rd = run_dir
        self.task = prep.data.task
        self.device = device or pick_device(cfg)
        self.schedule = cfg.resolved_schedule
        n = len(prep.train.input_ids)
        self.layout = BatchLayout(n, cfg.chunk_size, cfg.seed, distill=cfg.distills)
        # Probe set for probe_drift: fixed training samples, the same for every arm.
        self.probe_ids = list(range(min(cfg.probe_size, n)))

        # The model's new head is drawn from the seed, so vanilla and dynsdpb arms with the
        # same seed start from identical weights.
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg, prep.data.num_labels, self.task, prep.tokenizer)
        self.model.to(self.device).train()
        decay = [p for n_, p in self.model.named_parameters() if p.ndim >= 2]
        no_decay = [p for n_, p in self.model.named_parameters() if p.ndim < 2]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
        self.use_amp = self.device.type == "cuda"
        # Own RNG streams (dropout): arms do not disturb each other, resume is exact.
        gen = torch.Generator().manual_seed(cfg.seed + 7919)
        self.rng_state = gen.get_state()
        self.cuda_rng_state = None
        if self.device.type == "cuda":
            self.cuda_rng_state = self._fresh_cuda_rng(cfg.seed + 7919)

        self.step_idx = 0           # completed steps
        self.samples_seen = 0
        self.wall_time = 0.0
        # prev_logits cache, keyed by sample id: logits recorded when the sample was new,
        # with the alpha/tau (and signals) fixed at that moment for the step that uses them.
        self.cache: dict[int, dict[str, torch.Tensor]] = {}
        self.probe_prev: torch.Tensor | None = None
        self.last_eval: dict = {}
        self.state = "running"
        start_step = self.load_checkpoint() if resume else 0
        # Records after the checkpoint (or all of them, when starting over) are dropped: the
        # file then equals what an uninterrupted run would have written up to here.
        self.writer = MetricsWriter(run_dir.metrics_path, truncate_after_step=start_step)

    # -- RNG isolation ------------------------------------------------------------------
    def _fresh_cuda_rng(self, seed: int) -> torch.Tensor:
        saved = torch.cuda.get_rng_state(self.device)
        torch.cuda.manual_seed(seed)
        st = torch.cuda.get_rng_state(self.device)
        torch.cuda.set_rng_state(saved, self.device)
        return st

    def _enter_rng(self):
        self._saved = (torch.get_rng_state(),
                       torch.cuda.get_rng_state(self.device) if self.cuda_rng_state is not None
                       else None)
        torch.set_rng_state(self.rng_state)
        if self.cuda_rng_state is not None:
            torch.cuda.set_rng_state(self.cuda_rng_state, self.device)

    def _exit_rng(self):
        self.rng_state = torch.get_rng_state()
        torch.set_rng_state(self._saved[0])
        if self.cuda_rng_state is not None:
            self.cuda_rng_state = torch.cuda.get_rng_state(self.device)
            torch.cuda.set_rng_state(self._saved[1], self.device)

    # -- one step -----------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.step_idx >= self.cfg.steps

    def step(self) -> dict:
        """One optimizer step; returns the record written to metrics.jsonl."""
        self._enter_rng()
        try:
            return self._step()
        except TrainingFault:
            raise
        except Exception as e:
            if _is_oom(e):
                self.opt.zero_grad(set_to_none=True)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                raise TrainingFault(f"out of memory at step {self.step_idx + 1}", OOM_HINT,
                                    self.step_idx + 1) from e
            raise
        finally:
            self._exit_rng()

    def _step(self) -> dict:
        cfg, t = self.cfg, self.step_idx
        t0 = time.perf_counter()
        # 1) batch: the carried half (new at step t-1) first, then this step's new chunk
        b = self.layout.batch(t)
        ids = b.ids
        inputs = self.prep.collate(self.prep.train, ids, self.device)
        y = torch.as_tensor(self.prep.train.labels[ids], device=self.device)
        n_car = len(b.carried)

        # 2) teacher: logits these carried samples got one step ago, with alpha/tau fixed then
        prev_logits = alpha = tau = kd_mask = None
        if n_car:
            ents = [self.cache[i] for i in b.carried]
            old = torch.stack([e["logits"] for e in ents]).to(self.device)       # (B/2, C)
            prev_logits = torch.cat([old, torch.zeros((len(b.new),) + old.shape[1:],
                                                      device=self.device)])      # (N, C)
            pad = torch.zeros(len(b.new), device=self.device)
            alpha = torch.cat([torch.stack([e["alpha"] for e in ents]).to(self.device), pad])
            tau = torch.cat([torch.stack([e["tau"] for e in ents]).to(self.device), pad + 1])
            kd_mask = torch.arange(len(ids), device=self.device) < n_car
            u = torch.stack([e["u"] for e in ents])  # signals behind alpha/tau, for the log
            d = torch.stack([e["d"] for e in ents])

        # 3) forward, all samples in one pass (DLB concatenates the two halves too)
        lr = get_lr(t, cfg)
        for g in self.opt.param_groups:
            g["lr"] = lr
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
            logits = self.model(**inputs).logits                                  # (N, C)
        if self.task == "regression":
            logits = logits.view(-1)                                              # (N,)

        # 4) loss parts: CE on all, alpha * tau^2 * KL on the carried half
        parts = dynsdpb_loss(logits, y, prev_logits, alpha, tau, kd_mask, task=self.task)
        if not torch.isfinite(parts.total):
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
        if not torch.isfinite(gn):
            raise TrainingFault(f"gradient norm is {float(gn)} at step {t + 1}", NAN_HINT, t + 1)
        self.opt.step()

        # 6) this step's logits for the new chunk teach at step t+1. They come from this same
        #    forward pass, before the update (DLB: pre_out = out), and are detached.
        self.cache = {}
        if cfg.distills and t + 1 < cfg.steps:
            new_logits = logits[n_car:].detach().float()
            new_y = y[n_car:]
            teach = schedules.teacher_for(cfg, new_logits, new_y, t + 1, self.task,
                                          self.prep.data.target_std)
            for j, i in enumerate(b.new):
                self.cache[i] = {"logits": new_logits[j], "alpha": teach.alpha[j],
                                 "tau": teach.tau[j], "u": teach.u[j], "d": teach.d[j]}

        # 7) log what was actually used
        self.step_idx += 1
        self.samples_seen += len(ids)
        dt = time.perf_counter() - t0
        self.wall_time += dt
        rec = dict.fromkeys(RECORD_KEYS)
        rec.update(step=self.step_idx, epoch=round(b.epoch, 4), method=cfg.method,
                   schedule=self.schedule, seed=cfg.seed, loss=float(parts.total.detach()),
                   ce=float(parts.ce.detach()), kd=float(parts.kd.detach()), lr=lr, grad_norm=float(gn),
                   samples_seen=self.samples_seen, samples_per_s=len(ids) / max(dt, 1e-9),
                   wall_time=round(self.wall_time, 3))
        if n_car:
            rec.update(alpha=float(parts.alpha.mean()), alpha_min=float(parts.alpha.min()),
                       alpha_max=float(parts.alpha.max()), tau=float(parts.tau.mean()),
                       tau_min=float(parts.tau.min()), tau_max=float(parts.tau.max()),
                       logit_drift=float(parts.drift.mean()))
            if self.task != "regression":
                rec.update(u_mean=float(u.mean()), d_mean=float(d.mean()),
                           agreement=float(parts.agreement.mean()))

        # 8) eval, checkpoint
        if self.step_idx % cfg.eval_every == 0 or self.done:
            rec.update(self.evaluate())
        rec["time"] = time.time()  # when the record hits the file (the app measures its lag)
        self.writer.write(rec)
        if self.done or (cfg.checkpoint_every and self.step_idx % cfg.checkpoint_every == 0):
            # Never overwrite the last good checkpoint with non-finite weights (an update can
            # overflow with a finite loss and gradient; the next loss would catch it too late).
            if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
                raise TrainingFault(f"weights became non-finite at step {self.step_idx}",
                                    NAN_HINT, self.step_idx)
            # Inside step() the arm's RNG is the live global one and self.rng_state is still
            # the state from before this step: snapshot it, or a resume from this checkpoint
            # would replay this step's dropout masks.
            self.rng_state = torch.get_rng_state()
            if self.cuda_rng_state is not None:
                self.cuda_rng_state = torch.cuda.get_rng_state(self.device)
            self.save_checkpoint()
        return rec

    # -- evaluation ---------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, e, ids: list[int], bs: int = 64) -> torch.Tensor:
        was = self.model.training
        self.model.eval()
        outs = []
        for k in range(0, len(ids), bs):
            inputs = self.prep.collate(e, ids[k:k + bs], self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
                outs.append(self.model(**inputs).logits.float().cpu())
        self.model.train(was)
        return torch.cat(outs)

    def split_metrics(self, e, prefix: str) -> dict:
        ids = list(range(len(e.input_ids)))
        z = self.predict(e, ids)
        y = torch.as_tensor(e.labels)
        if self.task == "regression":
            m = regression_metrics(y.numpy(), z.view(-1).numpy())
            m["loss"] = m["mse"]
        else:
            m = classification_metrics(y.numpy(), z.argmax(-1).numpy(), z.shape[-1])
            m["loss"] = float(torch.nn.functional.cross_entropy(z, y.long()))
        return {f"{prefix}_{k}": v for k, v in m.items()}

    def evaluate(self) -> dict:
        out = self.split_metrics(self.prep.val, "val")
        # probe_drift: how far predictions on fixed training samples moved since the last
        # evaluation; the same number for every arm, vanilla included.
        z = self.predict(self.prep.train, self.probe_ids)
        if self.task == "regression":
            cur = z.view(-1)
            drift = None if self.probe_prev is None else float(((cur - self.probe_prev) ** 2).mean())
        else:
            cur = torch.log_softmax(z, -1)
            drift = None if self.probe_prev is None else float(
                torch.nn.functional.kl_div(cur, self.probe_prev, log_target=True,
                                           reduction="none").sum(-1).mean())
        self.probe_prev = cur
        out["probe_drift"] = drift
        self.last_eval = out
        return out

    # -- checkpoint ---------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        state = {
            "step": self.step_idx, "samples_seen": self.samples_seen, "wall_time": self.wall_time,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.opt.state_dict(),
            "rng": self.rng_state,
            "cuda_rng": self.cuda_rng_state.cpu() if self.cuda_rng_state is not None else None,
            "cache": {int(i): {k: v.detach().cpu() for k, v in e.items()}
                      for i, e in self.cache.items()},
            "probe_prev": self.probe_prev, "last_eval": self.last_eval,
            "config": self.cfg.to_dict(),
        }
        import io
        buf = io.BytesIO()
        torch.save(state, buf)
        # temp file + rename: a crash mid-save leaves the previous checkpoint intact
        atomic_write_bytes(self.rd.checkpoint_path, buf.getvalue())
        # ...and leaves its partial temp file behind: sweep those once a save has succeeded
        for tmp in self.rd.checkpoint_path.parent.glob(f".{self.rd.checkpoint_path.name}.*.tmp"):
            tmp.unlink(missing_ok=True)

    def load_checkpoint(self) -> int:
        p = self.rd.checkpoint_path
        if not p.is_file():
            raise ConfigError.one("resume", str(self.rd.path), "this run has no checkpoint to "
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
        self.model.load_state_dict(st["model"])
        self.opt.load_state_dict(st["optimizer"])
        self.step_idx, self.samples_seen = int(st["step"]), int(st["samples_seen"])
        self.wall_time = float(st["wall_time"])
        self.rng_state = st["rng"]
        if self.cuda_rng_state is not None and st.get("cuda_rng") is not None:
            self.cuda_rng_state = st["cuda_rng"]
        self.cache = {int(i): {k: v.to(self.device) for k, v in e.items()}
                      for i, e in st["cache"].items()}
        self.probe_prev = st["probe_prev"]
        self.last_eval = st.get("last_eval") or {}
        return self.step_idx

    # -- end of run ---------------------------------------------------------------------
    def finish(self) -> dict:
        """Test metrics, summary.json and the saved model."""
        test = self.split_metrics(self.prep.test, "test")
        primary = PRIMARY[self.task]
        summary = {
            "run": self.rd.id, "method": self.cfg.method, "schedule": self.schedule,
            "formula": schedules.describe(self.cfg, self.task), "seed": self.cfg.seed,
            "task": self.task, "primary_metric": primary, "labels": self.prep.data.label_names,
            "steps": self.step_idx, "samples_seen": self.samples_seen,
            "wall_time": round(self.wall_time, 2), "train_size": len(self.prep.train.input_ids),
            "val_size": len(self.prep.val.input_ids), "test_size": len(self.prep.test.input_ids),
            "data_source": self.prep.data.source, "device": str(self.device),
            **{k: v for k, v in self.last_eval.items() if k.startswith("val_")}, **test,
        }
        atomic_write_json(self.rd.summary_path, summary)
        if self.cfg.save_model:
            from transformers.utils import logging as hf_logging
            hf_logging.disable_progress_bar()
            self.model.save_pretrained(self.rd.model_path, safe_serialization=True)
            self.prep.tokenizer.save_pretrained(self.rd.model_path)
        self.writer.close()
        return summary


# ----------------------------------------------------------------------------------------
# Experiments: arms in lockstep

ProgressFn = Callable[[str, dict], None]


def arm_name(cfg: RunConfig) -> str:
    return f"{cfg.method}-s{cfg.seed}"


def run_arms(arms: list[Arm], stop: threading.Event | None = None,
             progress: ProgressFn | None = None) -> dict[str, str]:
    """Step every live arm round-robin until all are done, stopped or failed.

    Returns arm id -> final state. A fault in one arm fails that arm only.
    """
    stop = stop or threading.Event()
    final: dict[str, str] = {}
    for a in arms:
        a.rd.set_status("running", step=a.step_idx, steps=a.cfg.steps, started=time.time())
    live = [a for a in arms if not a.done]
    for a in arms:
        if a.done:
            final[a.rd.id] = _finish(a, progress)
    while live:
        for a in list(live):
            if stop.is_set():
                break
            try:
                rec = a.step()
            except TrainingFault as e:
                a.writer.close()
                a.rd.set_status("failed", step=a.step_idx, error=str(e), hint=e.hint,
                                failed_step=e.step)
                final[a.rd.id] = "failed"
                live.remove(a)
                if progress:
                    progress(a.rd.id, {"state": "failed", "error": str(e), "hint": e.hint})
                continue
            except Exception as e:  # noqa: BLE001 - a bug must not take the other arms down
                a.writer.close()
                a.rd.set_status("failed", step=a.step_idx, error=f"{type(e).__name__}: {e}",
                                hint="a file could not be written (is the disk full?); free "
                                "space, then resume from the last checkpoint"
                                if isinstance(e, OSError) else
                                "this looks like a bug; the metrics so far are kept")
                final[a.rd.id] = "failed"
                live.remove(a)
                continue
            a.rd.set_status("running", step=a.step_idx, steps=a.cfg.steps)
            if progress:
                progress(a.rd.id, rec)
            if a.done:
                live.remove(a)
                final[a.rd.id] = _finish(a, progress)
        if stop.is_set():
            for a in live:
                # Stop: the current step is complete; save and mark it resumable.
                a.save_checkpoint()
                a.writer.close()
                a.rd.set_status("stopped", step=a.step_idx)
                final[a.rd.id] = "stopped"
            break
    return final


def _finish(a: Arm, progress: ProgressFn | None) -> str:
    try:
        summary = a.finish()
    except Exception as e:  # noqa: BLE001
        a.rd.set_status("failed", step=a.step_idx, error=f"finishing failed: {e}",
                        hint=(OOM_HINT + "; " if _is_oom(e) else "")
                        + "the metrics and checkpoint are kept")
        return "failed"
    a.rd.set_status("finished", step=a.step_idx, finished=time.time())
    if progress:
        progress(a.rd.id, {"state": "finished", "summary": summary})
    return "finished"


def _write_run(rd: RunDir, cfg: RunConfig, experiment: str | None) -> None:
    atomic_write_json(rd.config_path, cfg.to_dict())
    rd.set_status("queued", created=time.time(), step=0, steps=cfg.steps, experiment=experiment)


def experiment_configs(base: RunConfig, methods: list[str], seeds: list[int]) -> list[RunConfig]:
    # Arms are named method-s<seed>: a repeated one would share (and clobber) a run folder.
    for name, vals in (("methods", methods), ("seeds", seeds)):
        if len(set(vals)) != len(vals):
            eg = "0,1,2" if name == "seeds" else "vanilla,dynsdpb"
            raise ConfigError.one(name, ",".join(map(str, vals)),
                                  f"give each of the {name} once, e.g. {eg}")
    return [base.replace(method=m, seed=s) for s in seeds for m in methods]


def create_experiment(runs_dir: str | Path, base: RunConfig, methods: list[str],
                      seeds: list[int], name: str = "", exp_dir: Path | None = None) -> Path:
    """Write the experiment folder and one queued run folder per arm; returns its path."""
    from .store import unique_dir
    cfgs = [check_config(c) for c in experiment_configs(base, methods, seeds)]
    if exp_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        exp_dir = unique_dir(Path(runs_dir), name or f"{stamp}-{base.dataset.split('/')[-1]}")
    exp_dir = Path(exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    arms = []
    for c in cfgs:
        rd = RunDir(exp_dir / arm_name(c))
        rd.path.mkdir(parents=True, exist_ok=True)
        _write_run(rd, c, exp_dir.name)
        arms.append(rd.id)
    atomic_write_json(exp_dir / "experiment.json", {
        "id": exp_dir.name, "name": name or exp_dir.name, "created": time.time(),
        "methods": methods, "seeds": seeds, "arms": arms, "base_config": base.to_dict()})
    return exp_dir


def run_experiment(exp_dir: str | Path, stop: threading.Event | None = None,
                   progress: ProgressFn | None = None, resume: bool = False,
                   upload: bytes | None = None) -> dict:
    """Train every arm of an experiment folder in lockstep and write its summary.json."""
    from .compare import write_summary
    from .config import from_dict
    from .store import read_json
    exp_dir = Path(exp_dir)
    meta = read_json(exp_dir / "experiment.json", {})
    if not isinstance(meta, dict) or not isinstance(meta.get("arms"), list):
        raise ConfigError.one("experiment", str(exp_dir / "experiment.json"), "missing or "
                              "damaged; this experiment cannot be run or resumed from it")
    rds = [RunDir(exp_dir / a) for a in meta["arms"]]
    for rd in rds:
        if not isinstance(rd.config(), dict) or not rd.config():
            # never fall back to the default config: that would train something else
            raise ConfigError.one("config", str(rd.config_path), "missing or damaged; this "
                                  "run cannot be run or resumed from it")
    cfgs = [from_dict(rd.config()) for rd in rds]
    if resume:
        from .store import check_not_busy
        check_not_busy(rds, str(exp_dir))
        keep = [(rd, c) for rd, c in zip(rds, cfgs) if rd.status().get("state") != "finished"]
        rds, cfgs = [k[0] for k in keep], [k[1] for k in keep]
    try:
        prep = Prepared(cfgs[0], upload=upload) if cfgs else None
        arms = [Arm(c, prep, rd, resume=resume and rd.has_checkpoint()) for rd, c in zip(rds, cfgs)]
    except (ConfigError, TrainingFault) as e:
        for rd in rds:
            rd.set_status("failed", error=str(e), hint=getattr(e, "hint", "fix the input"))
        raise
    except Exception as e:
        if _is_oom(e):
            for rd in rds:
                rd.set_status("failed", error="out of memory while loading", hint=OOM_HINT)
            raise TrainingFault("out of memory while loading", OOM_HINT) from e
        for rd in rds:
            rd.set_status("failed", error=f"{type(e).__name__}: {e}",
                          hint="could not set up the run")
        raise
    if prep is not None and prep.data.warnings:
        # e.g. "not valid UTF-8, read as latin-1": kept in each arm's status for the app,
        # shown by the CLI through `progress`.
        for rd in rds:
            rd.set_status(rd.raw_status().get("state", "queued"), warnings=prep.data.warnings)
        if progress:
            progress("data", {"state": "warning", "warnings": list(prep.data.warnings)})
    final = run_arms(arms, stop, progress)
    summary = write_summary(exp_dir)
    return {"states": final, "summary": summary}


def resume_states(exp_dir: Path) -> dict[str, str]:
    from .store import read_json
    meta = read_json(Path(exp_dir) / "experiment.json", {})
    return {a: RunDir(Path(exp_dir) / a).status().get("state", "?") for a in meta.get("arms", [])}


def nan_to_none(x):
    return None if isinstance(x, float) and not math.isfinite(x) else x
