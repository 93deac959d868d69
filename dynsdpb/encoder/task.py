"""The encoder tasks: sequence classification (one label per text or text pair) and regression
(one number per text), behind the engine's task seam (`engine.task.Task`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dynsdpb.config import RunConfig
from dynsdpb.encoder.data import Split, TaskData
from dynsdpb.encoder.models import build_model, load_tokenizer
from dynsdpb.encoder.views import augment, view_rng, word_groups
from dynsdpb.engine import schedules
from dynsdpb.engine.losses import LossParts, dynsdpb_loss
from dynsdpb.engine.task import Batch, View
from dynsdpb.errors import ConfigError
from dynsdpb.metrics import PRIMARY, classification_metrics, regression_metrics


@dataclass
class Encoded:
    """One tokenized split."""
    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: np.ndarray
    words: list[list[int]] | None = None   # views.word_groups per sample (train, views on)

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class Teacher:
    """The carried samples' teacher, laid out over the whole batch (zeros where none)."""
    prev_logits: torch.Tensor   # shape of this step's logits
    alpha: torch.Tensor         # (N,) or the kd_mask's shape
    tau: torch.Tensor
    kd_mask: torch.Tensor       # bool


class SequenceClassification:
    """One label per text (or text pair): an encoder with a classification head."""

    name = "classification"
    samples: tuple = ()   # no generations

    def __init__(self, cfg: RunConfig, data: TaskData):
        self.data = data
        self.tokenizer = load_tokenizer(cfg)
        self.max_len = cfg.max_len
        # Views (encoder/views.py): every arm of an experiment shares the task and the kind
        self.augment, self.augment_p = cfg.augment, cfg.augment_p
        self.mask_id = (self.tokenizer.mask_token_id if self.tokenizer.mask_token_id is not None
                        else self.tokenizer.unk_token_id)
        self.train = self._encode(data.train, views=self.augment != "none")
        self.val = self._encode(data.val)
        self.test = self._encode(data.test)

    @property
    def num_labels(self) -> int:
        return self.data.num_labels

    @property
    def primary_metric(self) -> str:
        return PRIMARY[self.name]

    # -- tokenizing and collating ------------------------------------------------------
    def _encode(self, s: Split, views: bool = False) -> Encoded:
        enc = self.tokenizer(s.texts, s.pairs, truncation=True, max_length=self.max_len)
        words = None
        if views:
            if not getattr(enc, "is_fast", False):
                raise ConfigError.one("augment", self.augment, "views need a fast tokenizer "
                                      "(word boundaries); this model has none: set augment none")
            words = [word_groups(enc.word_ids(i), enc.sequence_ids(i))
                     for i in range(len(enc["input_ids"]))]
        return Encoded(enc["input_ids"], enc.get("token_type_ids"), s.labels, words)

    def _view(self, e: Encoded, i: int, view: View) -> tuple[list[int], list[int] | None]:
        types = None if e.token_type_ids is None else e.token_type_ids[i]
        return augment(e.input_ids[i], types, e.words[i], self.augment, self.augment_p,
                       view_rng(view.seed, i, view.step), self.mask_id)

    def collate(self, e: Encoded, ids: list[int], device: torch.device,
                view: View | None = None) -> dict[str, torch.Tensor]:
        if view is not None and e.words is not None:
            feats = []
            for i in ids:
                x, tt = self._view(e, i, view)
                feats.append({"input_ids": x} if tt is None else
                             {"input_ids": x, "token_type_ids": tt})
        else:
            feats = [{"input_ids": e.input_ids[i]} for i in ids]
            if e.token_type_ids is not None:
                for f, i in zip(feats, ids):
                    f["token_type_ids"] = e.token_type_ids[i]
        batch = self.tokenizer.pad(feats, return_tensors="pt")
        return {k: v.to(device) for k, v in batch.items()}

    def batch(self, e: Encoded, ids: list[int], device: torch.device,
              view: View | None = None) -> Batch:
        return Batch(self.collate(e, ids, device, view),
                     torch.as_tensor(e.labels[ids], device=device))

    # -- model, forward, loss -------------------------------------------------------------
    def build_model(self, cfg: RunConfig, arm: str):
        """An encoder with a new head (drawn from torch's global RNG, seeded by the loop)."""
        return build_model(cfg, self.num_labels, self.name, self.tokenizer)

    def forward(self, model, batch: Batch) -> torch.Tensor:
        return model(**batch.inputs).logits                                      # (N, C)

    def loss(self, logits: torch.Tensor, batch: Batch, teacher: Teacher | None) -> LossParts:
        """CE on all samples, alpha * tau^2 * KL on the carried ones (losses.dynsdpb_loss)."""
        if teacher is None:
            return dynsdpb_loss(logits, batch.labels, task=self.name)
        return dynsdpb_loss(logits, batch.labels, teacher.prev_logits, teacher.alpha,
                            teacher.tau, teacher.kd_mask, task=self.name)

    def token_view(self, batch: Batch, parts: LossParts) -> None:
        return None  # one label per text: no tokens to colour

    def kd_mask(self, batch: Batch, n_carried: int) -> torch.Tensor:
        # The carried half comes first in every batch (layout.py): one teacher per sample.
        return torch.arange(len(batch.labels), device=batch.labels.device) < n_carried

    # -- teacher cache ----------------------------------------------------------------------
    def _teacher_for(self, cfg: RunConfig, logits: torch.Tensor, labels: torch.Tensor,
                     use_step: int) -> schedules.Teacher:
        return schedules.teacher_for(cfg, logits, labels, use_step, self.name)

    def pack(self, cfg: RunConfig, logits: torch.Tensor, labels: torch.Tensor,
             use_step: int) -> list[dict[str, torch.Tensor]]:
        """Cache entries for samples whose (detached) logits were just recorded: alpha/tau
        are fixed now, with the gold labels at hand, for the step `use_step` that uses them."""
        logits = logits.detach().float()
        teach = self._teacher_for(cfg, logits, labels, use_step)
        return [{"logits": logits[j], "alpha": teach.alpha[j], "tau": teach.tau[j],
                 "u": teach.u[j], "d": teach.d[j]} for j in range(len(logits))]

    def unpack(self, entries: list[dict[str, torch.Tensor]], batch: Batch,
               device: torch.device) -> Teacher:
        """The carried samples' entries (in batch order) spread over the whole batch."""
        n_new = len(batch.labels) - len(entries)
        old = torch.stack([e["logits"] for e in entries]).to(device)          # (B/2, C)
        prev = torch.cat([old, torch.zeros((n_new,) + old.shape[1:], device=device)])
        pad = torch.zeros(n_new, device=device)
        alpha = torch.cat([torch.stack([e["alpha"] for e in entries]).to(device), pad])
        tau = torch.cat([torch.stack([e["tau"] for e in entries]).to(device), pad + 1])
        return Teacher(prev, alpha, tau, self.kd_mask(batch, len(entries)))

    def signal_record(self, entries: list[dict[str, torch.Tensor]], parts: LossParts) -> dict:
        """The signals behind alpha/tau and how often the teacher's class survived (0-dim
        tensors: the loop reads a step's numbers to the host at once)."""
        return {"u_mean": torch.stack([e["u"] for e in entries]).mean(),
                "d_mean": torch.stack([e["d"] for e in entries]).mean(),
                "agreement": parts.agreement.mean()}

    # -- evaluation -------------------------------------------------------------------------
    @torch.inference_mode()
    def predict(self, model, e: Encoded, ids: list[int], device: torch.device,
                use_amp: bool, bs: int = 64) -> torch.Tensor:
        """Logits (len(ids), C) in the order of `ids`. Batches hold texts of similar length
        (less padding: 0.55-0.6x the time on tweets' test set on CPU, same argmax, logits
        within 1e-7 of index-order batches)."""
        was = model.training
        model.eval()
        order = sorted(range(len(ids)), key=lambda k: len(e.input_ids[ids[k]]))
        outs = []
        for k in range(0, len(order), bs):
            inputs = self.collate(e, [ids[j] for j in order[k:k + bs]], device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                outs.append(model(**inputs).logits.float().cpu())
        model.train(was)
        if not outs:
            return torch.empty(0)
        z = torch.cat(outs)
        out = torch.empty_like(z)
        out[torch.as_tensor(order)] = z
        return out

    def _metrics(self, y: torch.Tensor, z: torch.Tensor) -> dict:
        m = classification_metrics(y.numpy(), z.argmax(-1).numpy(), z.shape[-1])
        m["loss"] = float(torch.nn.functional.cross_entropy(z, y.long()))
        return m

    def split_metrics(self, model, e: Encoded, prefix: str, device: torch.device,
                      use_amp: bool) -> dict:
        z = self.predict(model, e, list(range(len(e))), device, use_amp)
        m = self._metrics(torch.as_tensor(e.labels), z)
        return {f"{prefix}_{k}": v for k, v in m.items()}

    def drift_of(self, prev: torch.Tensor, cur: torch.Tensor) -> float:
        """logit_drift's measure between two outputs of the same samples: the mean over rows
        of KL(prev || cur) at tau = 1 (as losses.dynsdpb_loss computes it)."""
        lp = torch.log_softmax(cur.float(), -1)
        lq = torch.log_softmax(prev.to(cur.device).float(), -1)
        return float(torch.nn.functional.kl_div(lp, lq, reduction="none", log_target=True)
                     .sum(-1).mean())

    def _probe_view(self, z: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(z, -1)

    def _probe_drift(self, cur: torch.Tensor, prev: torch.Tensor) -> float:
        return float(torch.nn.functional.kl_div(cur, prev, log_target=True,
                                                reduction="none").sum(-1).mean())

    def evaluate(self, model, probe_ids: list[int], probe_prev: torch.Tensor | None,
                 device: torch.device, use_amp: bool) -> tuple[dict, torch.Tensor]:
        """Validation metrics and probe_drift: how far predictions on fixed training samples
        moved since the last evaluation (the same number for every arm, vanilla included).
        Returns the metrics and the probe outputs to compare against next time."""
        out = self.split_metrics(model, self.val, "val", device, use_amp)
        cur = self._probe_view(self.predict(model, self.train, probe_ids, device, use_amp))
        out["probe_drift"] = None if probe_prev is None else self._probe_drift(cur, probe_prev)
        return out, cur

    def test_metrics(self, model, device: torch.device, use_amp: bool) -> dict:
        """Test metrics, and for classification how many classes the model predicted over
        the test set (1 = a constant prediction, which Compare and the report warn about)."""
        e = self.test
        z = self.predict(model, e, list(range(len(e))), device, use_amp)
        out = {f"test_{k}": v for k, v in self._metrics(torch.as_tensor(e.labels), z).items()}
        if z.dim() == 2 and len(e):
            out["test_predicted_classes"] = int(z.argmax(-1).unique().numel())
        return out


class SequenceRegression(SequenceClassification):
    """One number per text: a single-output head trained with MSE (method.md §4 [ours])."""

    name = "regression"

    def forward(self, model, batch: Batch) -> torch.Tensor:
        return model(**batch.inputs).logits.view(-1)                            # (N,)

    def _teacher_for(self, cfg, logits, labels, use_step):
        # alpha_i from the error of the previous prediction, scaled by the targets' spread
        return schedules.teacher_for(cfg, logits, labels, use_step, self.name,
                                     self.data.target_std)

    def signal_record(self, entries, parts) -> dict:
        return {}  # no class distribution: no uncertainty, margin or agreement

    def _metrics(self, y, z) -> dict:
        m = regression_metrics(y.numpy(), z.view(-1).numpy())
        m["loss"] = m["mse"]
        return m

    def drift_of(self, prev, cur) -> float:
        return float(((cur.float().view(-1) - prev.to(cur.device).float().view(-1)) ** 2).mean())

    def _probe_view(self, z):
        return z.view(-1)

    def _probe_drift(self, cur, prev) -> float:
        return float(((cur - prev) ** 2).mean())
