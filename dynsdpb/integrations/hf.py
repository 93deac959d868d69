"""DynSDPB inside a user's own `transformers.Trainer` code: `DynSDPBTrainer`.

Swap `Trainer` for `DynSDPBTrainer`, add `method=` (and, if wanted, the schedule's fields) and keep
the model, tokenizer, dataset, `TrainingArguments`, callbacks and `report_to`:

    trainer = DynSDPBTrainer(model=model, args=args, train_dataset=ds,
                             data_collator=DataCollatorWithPadding(tok), method="dynsdpb")

What it does is the engine's arm (engine/train.py), step for step:
  * the DLB layout (engine/layout.py): the training order is the engine's endless shuffled stream
    of the dataset's rows, cut into chunks of `per_device_train_batch_size` new rows; every
    micro-batch trains on the previous chunk (re-fed, carried half first) plus its own new chunk,
    and the chain runs on across epoch boundaries. Step 1 has no carried half: plain CE.
  * the soft target of a carried row is the logits that row got one optimizer step earlier, in
    the forward that trained on it as new (DLB's `pre_out`), detached; alpha and tau are fixed
    then by the engine's schedules (engine/schedules.py, decoder/loss.py for token-level teachers).
  * the loss is the engine's: engine/losses.dynsdpb_loss for sequence classification (N, C)
    logits, decoder/loss.token_loss for causal-LM logits (N, T, V) with labels masked by -100.
  * gradient accumulation: micro-batch j of step t carries micro-batch j of step t-1, so every
    teacher is exactly one optimizer step old. CE is normalised over the whole step's CE items
    (rows; target tokens for causal LM) and KD over its distilled items, so k micro-batches of b
    train exactly as the engine with batch_size k * b.
  * every step's loss parts are logged through `Trainer.log` under the engine's record keys
    (records.py: ce, kd, alpha, tau, logit_drift, agreement, ...): every tracker Trainer supports
    shows them. `trainer.dynsdpb_records` keeps one record per optimizer step.
  * checkpoints: each `checkpoint-N` folder gets `dynsdpb_chain.pt` (the carried chunks' row ids
    and their teacher cache); `train(resume_from_checkpoint=...)` restores it, so a resumed run
    equals an uninterrupted one. A checkpoint without it (e.g. written by a plain `Trainer`)
    restarts the chain: the first resumed step trains on its new chunk with CE only, said in
    the log.
What it refuses (one clear line each, `ConfigError`): samplers and collators that reorder or
alter rows (group_by_length and other `train_sampling_strategy` values, padding-free/flattening
collators, masked-LM collators), several processes, `auto_find_batch_size`, label smoothing and
a custom `compute_loss_func` (the loss is the engine's).
"""
from __future__ import annotations

import logging
import math
import os
from collections import deque
from dataclasses import dataclass, field, fields

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from dynsdpb.config import RunConfig, validate, with_family_defaults
from dynsdpb.decoder.loss import TokenTeacher, make_teachers, shift_labels, token_loss
from dynsdpb.engine import schedules
from dynsdpb.engine.schedules import describe
from dynsdpb.engine.layout import BatchLayout
from dynsdpb.engine.losses import dynsdpb_loss
from dynsdpb.engine.model_card import (CARD, METHOD_NAMES, PIPELINE, base_model, render,
                                        tags)
from dynsdpb.errors import ConfigError

logger = logging.getLogger(__name__)

IGNORE = -100
CHAIN_FILE = "dynsdpb_chain.pt"
# The method's settings a DynSDPBTrainer takes (RunConfig's fields, same names and meaning).
METHOD_FIELDS = ("method", "schedule", "alpha", "tau", "alpha_max", "tau_0", "tau_min",
                 "tau_max", "granularity", "tau_direction", "warmup_alpha_steps", "budget",
                 "kd_cache", "top_k")
# Record keys (records.py) logged through Trainer.log at every logging step.
LOGGED_KEYS = ("ce", "kd", "alpha", "alpha_lo", "alpha_hi", "tau", "tau_lo", "tau_hi",
               "logit_drift", "agreement", "u_mean", "d_mean", "aligned_tokens", "kd_cache_bytes")


def method_config(**kw) -> RunConfig:
    """The RunConfig holding a DynSDPBTrainer's method settings; every bad value at once."""
    unknown = sorted(set(kw) - set(METHOD_FIELDS))
    if unknown:
        raise ConfigError.one(unknown[0], kw[unknown[0]], "DynSDPBTrainer takes these method "
                              f"settings: {', '.join(METHOD_FIELDS)}")
    cfg = RunConfig(**kw)
    problems = [p for p in validate(cfg) if p.field in kw]
    if problems:
        raise ConfigError(problems)
    return cfg


@dataclass
class _Slot:
    """One carried chunk: the rows that were new in micro-batch j of the last step, and their
    teacher (classification: a dict of tensors; causal LM: a list of TokenTeacher)."""
    ids: list[int]
    feats: list | None
    teacher: object


@dataclass
class _Micro:
    """What training_step needs of one micro-batch it is handed."""
    slot: int
    new_ids: list[int]
    new_feats: list
    carried: _Slot | None
    n_carried: int
    ce_total: int    # CE items of the whole optimizer step (rows, or target tokens)
    kd_total: int    # distilled items of the whole step (carried rows, or their target tokens)


@dataclass
class _StepAcc:
    step: int
    vals: dict = field(default_factory=dict)   # 0-dim tensors, summed over micro-batches
    cat: dict = field(default_factory=dict)    # per-item tensors, concatenated


class _Indexed(torch.utils.data.Dataset):
    """The training rows with their index: the chain keeps ids, a checkpoint stores them."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return i, self.ds[i]


class ChainChunks:
    """Batch sampler: the engine's stream (engine/layout.py) cut into chunks of new rows. Epoch
    e of the Trainer yields chunks e*L .. (e+1)*L - 1, so epochs follow each other along one
    stream (a chunk may straddle the dataset's end, as in the engine). L is a multiple of the
    accumulation steps, so every optimizer step has the same micro-batches."""

    def __init__(self, n: int, chunk: int, seed: int, per_epoch: int):
        self.layout = BatchLayout(n, chunk, seed, distill=False)
        self.per_epoch = per_epoch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.per_epoch

    def __iter__(self):
        start = self.epoch * self.per_epoch
        for k in range(start, start + self.per_epoch):
            yield self.layout.chunk(k)


class _ChainLoader(torch.utils.data.DataLoader):
    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)


def _rows_only(raw):
    return raw   # collate_fn: keep the (index, features) pairs; the trainer collates


class _ChainCheckpoint(TrainerCallback):
    """Writes the carried chunks and their teacher cache into each checkpoint folder."""

    def __init__(self, trainer: "DynSDPBTrainer"):
        self.trainer = trainer

    def on_save(self, args, state, control, **kw):
        if state.is_world_process_zero:
            folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            if os.path.isdir(folder):
                self.trainer.save_chain(folder)
        return control


def _teacher_state(t) -> dict:
    if isinstance(t, dict):
        return {"kind": "rows", **{k: v.detach().cpu() for k, v in t.items()}}
    return {"kind": "tokens", "teachers": [
        {f.name: (v.detach().cpu() if isinstance(v, torch.Tensor) else v)
         for f in fields(TokenTeacher) for v in [getattr(x, f.name)]} for x in t]}


def _teacher_from(state: dict):
    if state["kind"] == "rows":
        return {k: v for k, v in state.items() if k != "kind"}
    return [TokenTeacher(**d) for d in state["teachers"]]


class DynSDPBTrainer(Trainer):
    """`transformers.Trainer` with DLB's batch layout and the engine's DynSDPB loss.

    Extra keyword arguments (RunConfig's fields of the same names, see `dynsdpb config`):
    method (vanilla | refeed | dlb | dynsdpb; default dynsdpb), schedule, alpha, tau, alpha_max,
    tau_0, tau_min, tau_max, granularity, tau_direction, warmup_alpha_steps, budget (epochs:
    per_device_train_batch_size new rows per micro-batch, plus as many carried; compute: half of
    it new, so a forward holds per_device_train_batch_size rows), kd_cache and top_k (causal LM).
    """

    def __init__(self, *args, method: str = "dynsdpb", **kwargs):
        mkw = {k: kwargs.pop(k) for k in list(kwargs) if k in METHOD_FIELDS}
        self.dynsdpb = method_config(method=method, **mkw)
        self._given = frozenset(mkw)   # tau fields not given follow the task (first batch)
        super().__init__(*args, **kwargs)
        # The loss below is already scaled for gradient accumulation (step-wide normalisers).
        self.loss_is_scaled_for_ga = True
        self.dynsdpb_records: list[dict] = []
        self._slots: list[_Slot | None] = []
        self._micro: deque[_Micro] = deque()
        self._now: _Micro | None = None
        self._acc: list[_StepAcc] = []
        self._rows = None
        self._collator_checked = False
        self._task_seen: str | None = None
        self.add_callback(_ChainCheckpoint(self))
        self._refuse_wrong_combinations()

    # -- what does not fit the layout -------------------------------------------------------
    def _refuse_wrong_combinations(self) -> None:
        a, cfg = self.args, self.dynsdpb
        strategy = getattr(a, "train_sampling_strategy", "random")
        if strategy != "random":
            raise ConfigError.one("train_sampling_strategy", strategy, "DynSDPBTrainer draws "
                                  "its own order (each micro-batch re-feeds the previous one's "
                                  "new rows); group_by_length and other samplers would reorder "
                                  "it: leave it at 'random'")
        if getattr(a, "group_by_length", False):
            raise ConfigError.one("group_by_length", True, "DynSDPBTrainer draws its own order; "
                                  "turn group_by_length off")
        if a.world_size > 1 or a.n_gpu > 1:
            raise ConfigError.one("world_size", max(a.world_size, a.n_gpu), "DynSDPBTrainer "
                                  "runs one process on one device; several processes or GPUs "
                                  "are not supported yet (the workbench's own runner does data "
                                  "parallel)")
        if a.auto_find_batch_size:
            raise ConfigError.one("auto_find_batch_size", True, "the chain needs a fixed batch "
                                  "size; set per_device_train_batch_size and turn it off")
        if a.label_smoothing_factor:
            raise ConfigError.one("label_smoothing_factor", a.label_smoothing_factor,
                                  "the loss is the engine's CE + KD without label smoothing; "
                                  "set it to 0")
        if self.compute_loss_func is not None:
            raise ConfigError.one("compute_loss_func", self.compute_loss_func, "DynSDPBTrainer "
                                  "computes the engine's loss; leave compute_loss_func out")
        if cfg.distills and cfg.budget == "compute" and a.per_device_train_batch_size % 2:
            raise ConfigError.one("per_device_train_batch_size", a.per_device_train_batch_size,
                                  "budget compute splits each batch into carried and new "
                                  "halves: use an even batch size")
        name = type(self.data_collator).__name__
        if name == "DataCollatorWithFlattening" or (
                name.startswith("DataCollatorFor") and getattr(self.data_collator, "mlm", False)):
            raise ConfigError.one("data_collator", name, "this collator packs or randomly masks "
                                  "rows, so a carried row would not be the row its teacher saw; "
                                  "use DataCollatorWithPadding, DataCollatorForSeq2Seq or "
                                  "DataCollatorForLanguageModeling(mlm=False)")

    @property
    def chunk_size(self) -> int:
        """New rows per micro-batch."""
        b = self.args.per_device_train_batch_size
        return b // 2 if (self.dynsdpb.distills and self.dynsdpb.budget == "compute") else b

    # -- data: the engine's stream, collated here with the carried rows ----------------------
    def get_train_dataloader(self):
        ds = self.train_dataset
        if ds is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        if isinstance(ds, torch.utils.data.IterableDataset) or not hasattr(ds, "__len__"):
            raise ConfigError.one("train_dataset", type(ds).__name__, "the chain re-feeds rows "
                                  "by index: give a map-style dataset with a length (e.g. a "
                                  "datasets.Dataset), not an iterable one")
        self._collate = self.data_collator
        try:
            import datasets
            is_hf = isinstance(ds, datasets.Dataset)
        except ImportError:
            is_hf = False
        if is_hf:
            ds = self._remove_unused_columns(ds, description="training")
        else:
            self._collate = self._get_collator_with_removed_columns(self.data_collator,
                                                                    "training")
        n, c, ga = len(ds), self.chunk_size, self.args.gradient_accumulation_steps
        per_epoch = (n // (c * ga)) * ga
        if per_epoch == 0:
            raise ConfigError.one("per_device_train_batch_size",
                                  self.args.per_device_train_batch_size,
                                  f"{n} training rows do not fill one optimizer step of {c * ga} "
                                  "new rows: lower the batch size or gradient_accumulation_steps")
        self._rows = _Indexed(ds)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        self._chunks = ChainChunks(n, c, seed, per_epoch)
        a = self.args
        return _ChainLoader(self._rows, batch_sampler=self._chunks, collate_fn=_rows_only,
                            num_workers=a.dataloader_num_workers,
                            persistent_workers=a.dataloader_persistent_workers and
                            a.dataloader_num_workers > 0)

    def _check_collator(self, feats: list, batch) -> None:
        """Refuse a collator that drops, reorders or alters rows (first batch only)."""
        rows = len(feats)
        got = batch.get("input_ids")
        if got is None or len(got) != rows:
            raise ConfigError.one("data_collator", type(self.data_collator).__name__,
                                  f"it turned {rows} rows into a batch of "
                                  f"{None if got is None else len(got)} input_ids rows; the chain "
                                  "needs one output row per input row, in order")
        mask = batch.get("attention_mask")
        for r, f in enumerate(feats):
            want = list(f["input_ids"]) if "input_ids" in f else None
            if want is not None and "attention_mask" in f:     # rows padded beforehand
                want = [x for x, m in zip(want, f["attention_mask"]) if int(m)]
            have = got[r] if mask is None else got[r][mask[r].bool()]
            if want is not None and have.tolist() != [int(x) for x in want]:
                raise ConfigError.one("data_collator", type(self.data_collator).__name__,
                                      "it reorders or alters rows (row "
                                      f"{r} of the batch is not row {r} given to it); the chain "
                                      "needs each output row to be its input row")
        self._collator_checked = True

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        raws = []
        for _ in range(num_batches):
            try:
                raws.append(next(epoch_iterator))
            except StopIteration:
                break
        ga = self.args.gradient_accumulation_steps
        if len(self._slots) != ga:
            self._slots = [None] * ga
        distill = self.dynsdpb.distills
        batches, micros, ce_total, kd_total = [], [], 0, 0
        for j, raw in enumerate(raws):
            ids, feats = [i for i, _ in raw], [f for _, f in raw]
            slot = self._slots[j] if distill else None
            if slot is not None and slot.feats is None:     # restored from a checkpoint
                slot.feats = [self._rows[i][1] for i in slot.ids]
            car = slot.feats if slot is not None else []
            batch = self._collate(list(car) + list(feats))
            if not self._collator_checked:
                self._check_collator(list(car) + list(feats), batch)
            labels = batch["labels"]
            n_car = len(car)
            if labels.ndim >= 2:     # token labels (causal LM): target tokens after the shift
                tgt = shift_labels(labels) != IGNORE
                ce_total += int(tgt.sum())
                kd_total += int(tgt[:n_car].sum())
            else:
                ce_total += len(labels)
                kd_total += n_car
            batches.append(batch)
            micros.append((j, ids, feats, slot, n_car))
        for j, ids, feats, slot, n_car in micros:
            self._micro.append(_Micro(j, ids, feats, slot, n_car, ce_total, kd_total))
        self._acc.append(_StepAcc(self.state.global_step + 1))
        return batches, None

    # -- the step -----------------------------------------------------------------------------
    def training_step(self, model, inputs, num_items_in_batch=None):
        self._now = self._micro.popleft()
        try:
            return super().training_step(model, inputs, None)
        finally:
            self._now = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mb = self._now
        if mb is None:     # evaluation (prediction_step): the model's own loss
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        cfg = self.dynsdpb
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        n_car, t = mb.n_carried, self.state.global_step      # t: 0-based step
        tokens = logits.ndim == 3
        if tokens and self._task_seen is None:
            # a causal LM distils through the top-k cache: the decoder temperatures for the
            # tau fields not given (config.DECODER_TEMPERATURES), before any teacher is made
            self.dynsdpb = cfg = with_family_defaults(cfg, self._given, decoder=True)
        self._task_seen = "causal-lm" if tokens else "classification"
        acc = self._acc[-1]
        if tokens:
            teachers = None
            if n_car:
                teachers = list(mb.carried.teacher) + [None] * (len(labels) - n_car)
            parts = token_loss(logits, labels, teachers)
            n_ce = parts.n_targets
        else:
            if logits.ndim != 2 or logits.shape[-1] < 2 or labels.ndim != 1:
                raise ConfigError.one("model", type(model).__name__, "DynSDPBTrainer trains "
                                      "sequence classification ((N, C) logits, C >= 2, one class "
                                      "id per row) and causal LMs ((N, T, V) logits); "
                                      "regression and multi-label heads are not supported here "
                                      "yet")
            if n_car:
                tch = mb.carried.teacher
                dev, n_new = logits.device, len(labels) - n_car
                prev = torch.cat([tch["logits"].to(dev),
                                  torch.zeros((n_new,) + tuple(logits.shape[1:]), device=dev)])
                pad = torch.zeros(n_new, device=dev)
                alpha = torch.cat([tch["alpha"].to(dev), pad])
                tau = torch.cat([tch["tau"].to(dev), pad + 1])
                mask = torch.arange(len(labels), device=dev) < n_car
                parts = dynsdpb_loss(logits, labels, prev, alpha, tau, mask)
            else:
                parts = dynsdpb_loss(logits, labels)
            n_ce = len(labels)
        # The step's loss: CE over every CE item of the step, KD over its distilled items
        # (with one micro-batch both factors are 1.0 exactly: the engine's loss).
        m = parts.alpha.numel()
        ce = parts.ce * (n_ce / mb.ce_total)
        kd = parts.kd * (m / mb.kd_total) if (m and mb.kd_total) else parts.kd * 0.0
        total = ce + kd
        self._record(acc, ce, kd, parts, mb, tokens)
        # This forward's logits of the new rows teach them at the next step (DLB: pre_out).
        if cfg.distills:
            new_logits, new_labels = logits[n_car:].detach(), labels[n_car:]
            if tokens:
                teacher = make_teachers(new_logits, new_labels, cfg, t + 1, kind=cfg.kd_cache,
                                        k=cfg.top_k, per_token=cfg.granularity == "token")
            else:
                z = new_logits.float()
                tch = schedules.teacher_for(cfg, z, new_labels, t + 1)
                teacher = {"logits": z, "alpha": tch.alpha, "tau": tch.tau, "u": tch.u,
                           "d": tch.d}
            self._slots[mb.slot] = _Slot(mb.new_ids, mb.new_feats, teacher)
        return (total, outputs) if return_outputs else total

    def _record(self, acc: _StepAcc, ce, kd, parts, mb: _Micro, tokens: bool) -> None:
        v, c = acc.vals, acc.cat
        for k, x in (("ce", ce.detach()), ("kd", kd.detach())):
            v[k] = v[k] + x if k in v else x
        if parts.alpha.numel():
            for k, x in (("alpha", parts.alpha), ("tau", parts.tau),
                         ("logit_drift", parts.logit_drift), ("agreement", parts.agreement)):
                c.setdefault(k, []).append(x.detach().float())
            tch = mb.carried.teacher
            if tokens:
                c.setdefault("u_mean", []).extend(x.u for x in tch)
                c.setdefault("d_mean", []).extend(x.d for x in tch)
                v["aligned_tokens"] = v.get("aligned_tokens", 0) + int(parts.alpha.numel())
                nb = sum(x.nbytes() for x in tch)
            else:
                c.setdefault("u_mean", []).append(tch["u"])
                c.setdefault("d_mean", []).append(tch["d"])
                nb = sum(x.numel() * x.element_size() for x in tch.values())
            v["kd_cache_bytes"] = v.get("kd_cache_bytes", 0) + nb

    # -- records: one per optimizer step, read to the host at logging time -----------------
    def _flush_records(self) -> list[dict]:
        done, self._acc = self._acc, []
        out = []
        for acc in done:
            vals = {k: x for k, x in acc.vals.items()}
            for k, xs in acc.cat.items():
                x = torch.cat([y.reshape(-1).float().to(xs[0].device) for y in xs])
                if k in ("alpha", "tau"):
                    vals.update({k: x.mean(), f"{k}_lo": x.min(), f"{k}_hi": x.max()})
                else:
                    vals[k] = x.mean()
            keys = [k for k, x in vals.items() if isinstance(x, torch.Tensor)]
            if keys:
                got = torch.stack([vals[k].reshape(()).double().cpu() for k in keys]).tolist()
                vals.update(zip(keys, got))
            rec = {"step": acc.step, **vals}
            if "ce" in rec:
                rec["loss"] = rec["ce"] + rec["kd"]
            out.append(rec)
        self.dynsdpb_records.extend(out)
        return out

    def log(self, logs: dict, start_time: float | None = None) -> None:
        if "loss" in logs and not any(k.startswith("eval_") for k in logs):
            recs = [r for r in self._flush_records() if "ce" in r]
            for k in LOGGED_KEYS:
                xs = [r[k] for r in recs if r.get(k) is not None and not
                      (isinstance(r[k], float) and math.isnan(r[k]))]
                if not xs:
                    continue
                if k.endswith("_lo"):
                    logs[k] = min(xs)
                elif k.endswith("_hi"):
                    logs[k] = max(xs)
                else:
                    logs[k] = sum(xs) / len(xs)
        super().log(logs, start_time)

    # -- checkpoint and resume -----------------------------------------------------------------
    def chain_state(self) -> dict:
        return {"version": 1, "method": self.dynsdpb.method, "chunk_size": self.chunk_size,
                "accumulation": self.args.gradient_accumulation_steps,
                "rows": len(self._rows) if self._rows is not None else None,
                "step": self.state.global_step,
                "slots": [None if s is None else {"ids": list(s.ids),
                                                  "teacher": _teacher_state(s.teacher)}
                          for s in self._slots]}

    def save_chain(self, folder: str) -> None:
        torch.save(self.chain_state(), os.path.join(folder, CHAIN_FILE))

    def load_chain(self, folder: str) -> bool:
        """Restore the carried chunks from a checkpoint folder; False (chain restarts) when the
        folder has none."""
        path = os.path.join(folder, CHAIN_FILE)
        if not os.path.isfile(path):
            return False
        st = torch.load(path, weights_only=True)
        want = {"method": self.dynsdpb.method, "chunk_size": self.chunk_size,
                "accumulation": self.args.gradient_accumulation_steps}
        for k, v in want.items():
            if st[k] != v:
                raise ConfigError.one(k, v, f"the checkpoint's chain was made with {k} = {st[k]}; "
                                      "resume with the same settings")
        self._slots = [None if s is None else _Slot(s["ids"], None, _teacher_from(s["teacher"]))
                       for s in st["slots"]]
        return True

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None,
              **kwargs):
        self._slots, self._micro, self._acc = [], deque(), []
        self._collator_checked = False
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No valid checkpoint found in output directory "
                                 f"({self.args.output_dir})")
        if resume_from_checkpoint and self.dynsdpb.distills:
            if not self.load_chain(resume_from_checkpoint):
                logger.warning("%s has no %s (not written by DynSDPBTrainer): the DLB chain "
                               "restarts; the first resumed step trains on its new rows with "
                               "CE only", resume_from_checkpoint, CHAIN_FILE)
        out = super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial,
                            ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)
        self._flush_records()
        return out

    # -- the saved model's card ---------------------------------------------------------------
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Trainer's save, and (not for checkpoints) a Hub-format model card, README.md."""
        super().save_model(output_dir, _internal_call)
        if not _internal_call and self.args.should_save:
            folder = output_dir or self.args.output_dir
            with open(os.path.join(folder, CARD), "w", encoding="utf-8") as f:
                f.write(self.model_card())

    def model_card(self) -> str:
        cfg, a = self.dynsdpb, self.args
        model = self.model
        adapter = hasattr(model, "peft_config")
        name = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
        if adapter:
            name = getattr(model.peft_config.get("default"), "base_model_name_or_path", name)
        task = self._task_seen or "classification"
        meta = {"library_name": "peft" if adapter else "transformers",
                "pipeline_tag": PIPELINE[task],
                "tags": tags(cfg.method)}
        hub = base_model(name) if name else None
        if hub:
            meta["base_model"] = hub
        n = len(self._rows) if self._rows is not None else None
        facts = [f"**Base model:** `{name or type(model).__name__}`",
                 "**Dataset:** the training dataset given to DynSDPBTrainer"
                 + (f" ({n} rows)" if n else ""),
                 f"**Task:** {task}",
                 f"**Method:** {METHOD_NAMES.get(cfg.method, cfg.method)} (schedule "
                 f"`{cfg.resolved_schedule}`), trained with DynSDPBTrainer "
                 f"({self.state.global_step} optimizer steps)",
                 f"**Saved as:** {'a PEFT adapter' if adapter else 'a transformers model'}; "
                 "load it with `from_pretrained` on this folder."]
        evals = [h for h in self.state.log_history if any(k.startswith("eval_") for k in h)]
        if evals:
            rows = ["| metric | value | step |", "|---|---|---|"]
            rows += [f"| {k[5:]} | {v:.4f} | {evals[-1].get('step')} |"
                     for k, v in evals[-1].items() if k.startswith("eval_")
                     and isinstance(v, float) and not k.endswith(("runtime", "_per_second"))]
            results = "\n".join(rows) + ("\n\nThe last evaluation on the eval_dataset; "
                                         "no vanilla run to compare with in this training.\n")
        else:
            results = "No evaluation was run.\n"
        config = {k: getattr(cfg, k) for k in METHOD_FIELDS}
        config.update({k: getattr(a, k) for k in (
            "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps",
            "max_steps", "num_train_epochs", "warmup_steps", "weight_decay", "max_grad_norm",
            "lr_scheduler_type", "seed", "data_seed")})
        config["lr_scheduler_type"] = str(config["lr_scheduler_type"])
        return render(meta, f"{(name or type(model).__name__).split('/')[-1]} fine-tuned with "
                      f"{cfg.method} (DynSDPBTrainer)", facts, describe(cfg, task), results,
                      config, ["The training script that ran `DynSDPBTrainer` with the settings "
                               "above (dynsdpb.integrations; see the workbench's "
                               "examples/hf_trainer.py)."])
