"""CausalLMTask: the decoder-only task for the engine's task seam (tasks.py).

It follows tasks.SequenceClassification's interface (batch, forward, kd_mask, pack, unpack,
signal_record, evaluate, test_metrics) and adds the two things a decoder needs that the
encoder tasks leave to the loop today:

    task.build_model(cfg, arm)   -> the arm's model. LoRA (default): an `AdapterView` on one
                                    frozen base shared by all arms of the experiment, so the
                                    loop's optimizer, clipping, state_dict and save_pretrained
                                    see only that arm's adapter. full: an own full copy.
    task.loss(logits, batch, teacher) -> lm_loss.TokenLossParts (top-k cache, alignment);
                                    the loop calls it instead of losses.dynsdpb_loss.

`unpack` returns the per-sequence TokenTeachers laid over the batch (None for new rows)
rather than tasks.Teacher, because the top-k cache is not a logits tensor.
Not wired into train.Arm yet: see the report of issue #9 for the two lines the loop needs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from .generation import evaluate_generation, target_loss
from .lm_data import IGNORE, LMExample, answer_scorer, collate, encode, load_lm_splits
from .lm_loss import cache_nbytes, causal_shift, make_teachers, shift_labels, token_loss
from .lm_models import (LoraSettings, SharedLoraBase, full_arm, load_causal_lm,
                        load_lm_tokenizer)
from .tasks import Batch


@dataclass
class EncodedLM:
    """One tokenized split: input_ids + labels per example (labels -100 on the prompt)."""
    rows: list[dict[str, list[int]]]
    examples: list[LMExample]

    def __len__(self) -> int:
        return len(self.rows)


class AdapterView(torch.nn.Module):
    """One arm's view of a SharedLoraBase: forward switches to the arm's adapter first;
    parameters / state_dict / save_pretrained cover that adapter only."""

    def __init__(self, shared: SharedLoraBase, name: str, tokenizer=None, merged: bool = False):
        super().__init__()
        # Plain attributes, not submodules: nn.Module would otherwise walk the whole base.
        object.__setattr__(self, "shared", shared)
        self.arm, self.tokenizer, self.merged = name, tokenizer, merged

    @property
    def config(self):
        return self.shared.model.config

    @property
    def device(self):
        return next(self.shared.model.parameters()).device

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate=True):
        tag = f".{self.arm}."
        for n, p in self.shared.model.named_parameters():
            if "lora_" in n and tag in n:
                yield prefix + n, p

    def parameters(self, recurse: bool = True):
        for _, p in self.named_parameters():
            yield p

    def state_dict(self, *a, **kw):
        return self.shared.adapter_state(self.arm)

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        self.shared.load_adapter_state(self.arm, state)

    def train(self, mode: bool = True):
        self.training = mode
        self.shared.model.train(mode)
        return self

    def to(self, *a, **kw):
        self.shared.model.to(*a, **kw)
        return self

    def forward(self, **inputs):
        self.shared.use(self.arm)
        return self.shared.model(**inputs)

    def generate(self, **kw):
        self.shared.use(self.arm)
        return self.shared.model.generate(**kw)

    def save_pretrained(self, path, **kw):
        if self.merged:
            return self.shared.save_merged(self.arm, path)
        return self.shared.save_adapter(self.arm, path)


@dataclass
class LMTaskOptions:
    finetune: str = "lora"            # lora | full
    lora: LoraSettings = field(default_factory=LoraSettings)
    cache: str = "topk"               # topk | full (method.md §5)
    per_token: bool = False           # alpha/tau per token instead of per sequence
    save: str = "adapter"             # adapter | merged (LoRA only)
    max_new_tokens: int = 16
    gen_batch_size: int = 16
    n_samples: int = 4                # sample generations kept per evaluation


class CausalLMTask:
    name = "causal-lm"
    primary_metric = "accuracy"
    num_labels = 0

    def __init__(self, cfg, options: LMTaskOptions | None = None, splits=None):
        self.opt = options or LMTaskOptions()
        if self.opt.finetune not in ("lora", "full"):
            from .errors import ConfigError
            raise ConfigError.one("finetune", self.opt.finetune, "use lora or full")
        self.model_name = cfg.model
        self.trust_remote_code = cfg.trust_remote_code
        self.tokenizer = load_lm_tokenizer(cfg.model, cfg.trust_remote_code)
        self.max_len = cfg.max_len
        splits = splits or load_lm_splits(cfg.dataset, cfg.split_seed, cfg.max_train_samples,
                                          cfg.val_size, cfg.test_size)
        self.score = answer_scorer(splits.scorer)
        self.data = SimpleNamespace(warnings=[], label_names=None, source=cfg.dataset,
                                    scorer=splits.scorer, task=self.name)
        self.train, self.val, self.test = (self._encode(s) for s in
                                           (splits.train, splits.val, splits.test))
        self._base = None      # the shared LoRA base, loaded with the first arm
        self.samples: list[dict] = []  # the latest evaluation's sample generations

    def _encode(self, exs: list[LMExample]) -> EncodedLM:
        return EncodedLM([encode(self.tokenizer, e, self.max_len) for e in exs], list(exs))

    # -- models -----------------------------------------------------------------------------
    def build_model(self, cfg, arm: str):
        """LoRA: the arm's adapter (LoRA A drawn from cfg.seed, B = 0: every arm starts as the
        base model). full: a full copy of the base."""
        if self.opt.finetune == "full":
            return load_causal_lm(self.model_name, self.trust_remote_code)
        if self._base is None:
            self._base = SharedLoraBase(load_causal_lm(self.model_name, self.trust_remote_code),
                                        self.opt.lora)
        self._base.add_arm(arm, seed=cfg.seed)
        return AdapterView(self._base, arm, self.tokenizer, merged=self.opt.save == "merged")

    # -- batches and forward ------------------------------------------------------------------
    def batch(self, e: EncodedLM, ids: list[int], device) -> Batch:
        b = collate([e.rows[i] for i in ids], self.tokenizer.pad_token_id)
        labels = b.pop("labels").to(device)
        return Batch({k: v.to(device) for k, v in b.items()}, labels)

    def forward(self, model, batch: Batch) -> torch.Tensor:
        return model(**batch.inputs).logits                                   # (N, T, V)

    def kd_mask(self, batch: Batch, n_carried: int) -> torch.Tensor:
        """Target tokens (after the shift) of the carried rows, (N, T-1). Alignment in the
        loss may distil fewer (a no-op in plain SFT)."""
        m = shift_labels(batch.labels) != IGNORE
        m[n_carried:] = False
        return m

    # -- teacher cache ----------------------------------------------------------------------
    def pack(self, cfg, logits, labels, use_step: int) -> list:
        ts = make_teachers(logits, labels, cfg, use_step, kind=self.opt.cache, k=cfg.top_k,
                           per_token=self.opt.per_token)
        # The cache waits one step: keep it off the accelerator.
        for t in ts:
            for f in ("target_ids", "alpha", "tau", "u", "d", "ids", "logq", "logq_rest",
                      "aux", "logits"):
                if getattr(t, f) is not None:
                    setattr(t, f, getattr(t, f).cpu())
        return ts

    def unpack(self, entries: list, batch: Batch, device) -> list:
        return list(entries) + [None] * (len(batch.labels) - len(entries))

    def loss(self, logits, batch: Batch, teacher):
        return token_loss(logits, batch.labels, teacher)

    def signal_record(self, entries: list, parts) -> dict:
        n_tgt = sum(len(e.target_ids) for e in entries)
        return {"u_mean": float(torch.cat([e.u for e in entries]).mean()),
                "d_mean": float(torch.cat([e.d for e in entries]).mean()),
                "agreement": float(parts.agreement.mean()) if parts.agreement.numel() else None,
                "aligned_share": float(parts.aligned.sum()) / max(n_tgt, 1),
                "cache_bytes": cache_nbytes(entries)}

    # -- evaluation -------------------------------------------------------------------------
    def split_metrics(self, model, e: EncodedLM, prefix: str, device, use_amp) -> dict:
        loss, ppl = target_loss(model, self.tokenizer, e.examples, self.max_len)
        ev = evaluate_generation(model, self.tokenizer, e.examples, self.score,
                                 self.opt.max_new_tokens, self.opt.gen_batch_size,
                                 self.opt.n_samples)
        self.samples = ev.samples
        return {f"{prefix}_loss": loss, f"{prefix}_ppl": ppl, f"{prefix}_accuracy": ev.accuracy}

    @torch.no_grad()
    def _probe(self, model, ids: list[int], device) -> torch.Tensor:
        """Log-probs at the probe samples' target tokens, (M, V)."""
        was = model.training
        model.eval()
        try:
            b = self.batch(self.train, ids, device)
            z, y = causal_shift(self.forward(model, b), b.labels)
            return F.log_softmax(z[y != IGNORE].float(), -1).cpu()
        finally:
            model.train(was)

    def evaluate(self, model, probe_ids, probe_prev, device, use_amp):
        out = self.split_metrics(model, self.val, "val", device, use_amp)
        cur = self._probe(model, probe_ids, device)
        out["probe_drift"] = None if probe_prev is None else float(
            F.kl_div(cur, probe_prev, log_target=True, reduction="none").sum(-1).mean())
        return out, cur

    def test_metrics(self, model, device, use_amp) -> dict:
        return self.split_metrics(model, self.test, "test", device, use_amp)
