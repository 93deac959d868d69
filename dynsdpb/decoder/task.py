"""CausalLMTask: the decoder-only task for the engine's task seam (engine/task.py).

It implements engine.task.Task, as encoder.task.SequenceClassification does, with a decoder's
answers to the hooks:

    task.build_model(cfg, arm)   -> the arm's model. LoRA (default): an `AdapterView` on one
                                    frozen base shared by all arms of the experiment, so the
                                    loop's optimizer, clipping, state_dict and save_pretrained
                                    see only that arm's adapter. full: an own full copy.
    task.loss(logits, batch, teacher) -> decoder.loss.TokenLossParts (top-k cache, alignment).
    task.pack / unpack           cache entries are plain dicts of tensors (a checkpoint holds
                                    them as it holds the encoders'); `unpack` turns them into
                                    decoder.loss.TokenTeachers laid over the batch (None for new
                                    rows), since the top-k cache is not a logits tensor.
    task.samples                 the last evaluation's sample generations (samples.jsonl)
    task.token_view(batch, parts) the first carried sequence's target tokens with the alpha and
                                    KD each got (tokens.jsonl)

The options come from RunConfig (`LMTaskOptions.from_config`): finetune, lora_*, kd_cache,
top_k, granularity token, save_format, max_new_tokens, eval_generations. val_size/test_size
0 (auto) mean 32/64 here: every evaluation generates, which is the slow part on a CPU.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import hashlib
import json

import torch
import torch.nn.functional as F

from dynsdpb.decoder.generation import echo_share, evaluate_generation, target_loss
from dynsdpb.tables import read_table
from dynsdpb.decoder.data import (IGNORE, LMExample, answer_scorer, collate, cut_warning, encode,
                                  load_lm_splits, splits_from_records)
from dynsdpb.decoder.loss import TokenTeacher, causal_shift, make_teachers, shift_labels, token_loss
from dynsdpb.decoder.models import LoraSettings, SharedLoraBase, load_causal_lm, load_lm_tokenizer
from dynsdpb.engine.task import Batch


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

    @classmethod
    def from_config(cls, cfg) -> "LMTaskOptions":
        mods = tuple(m.strip() for m in cfg.lora_target_modules.split(",") if m.strip())
        return cls(finetune=cfg.finetune,
                   lora=LoraSettings(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                                     target_modules=mods),
                   cache=cfg.kd_cache, per_token=cfg.granularity == "token",
                   save=cfg.save_format, max_new_tokens=cfg.max_new_tokens,
                   n_samples=cfg.eval_generations)


# Cache entry fields (TokenTeacher's tensors); `logits` marks a full cache, `ids` a top-k one.
def _to_cpu(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The tensors on the CPU, copied in one transfer per dtype rather than one each (a
    step's cache is ~9 small tensors per sequence, and every copy waits for the device)."""
    out: list = [None] * len(tensors)
    by_dtype: dict = {}
    for j, v in enumerate(tensors):
        by_dtype.setdefault(v.dtype, []).append(j)
    for js in by_dtype.values():
        flat = torch.cat([tensors[j].detach().reshape(-1) for j in js]).cpu()
        for j, piece in zip(js, flat.split([tensors[j].numel() for j in js])):
            out[j] = piece.view(tensors[j].shape).clone()
    return out


def topk_mass(entries: list[dict]) -> torch.Tensor | None:
    """Mean teacher probability mass (at the cached tau) that the top-k cache keeps per
    target token, 1 - q(rest), over the entries; None for a full cache (it keeps it all)."""
    rest = [e["logq_rest"] for e in entries if "logq_rest" in e]
    if not rest:
        return None
    return (1 - torch.cat(rest).float().exp()).mean()


_ENTRY = ("target_ids", "alpha", "tau", "u", "d", "ids", "logq", "logq_rest", "aux", "logits")


def fingerprint(examples: list[LMExample]) -> dict:
    """Size and sha256 of the training rows: a checkpoint keeps it, and a resume on other
    data is refused (checkpoint._check_data), as for the encoders."""
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps([e.prompt, e.target, e.answer]).encode())
    return {"train_size": len(examples), "train_sha256": h.hexdigest()}


AUTO_VAL, AUTO_TEST = 32, 64   # val_size/test_size 0 (auto) for decoders


def split_rows(cfg, rows: list[dict], warnings=()):
    """Rows with prompt/target[/answer] (an upload, a file read by tables.read_table) split as
    a run of `cfg` will: the checks the app and the job manager make before starting."""
    return splits_from_records(rows, cfg.dataset, cfg.split_seed, cfg.max_train_samples,
                               cfg.val_size or AUTO_VAL, cfg.test_size or AUTO_TEST, warnings)


class CausalLMTask:
    name = "causal-lm"
    primary_metric = "exact_match"
    num_labels = 0

    def __init__(self, cfg, options: LMTaskOptions | None = None, splits=None,
                 upload: bytes | None = None):
        self.opt = options or LMTaskOptions.from_config(cfg)
        if self.opt.finetune not in ("lora", "full"):
            from dynsdpb.errors import ConfigError
            raise ConfigError.one("finetune", self.opt.finetune, "use lora or full")
        self.model_name = cfg.model
        self.trust_remote_code = cfg.trust_remote_code
        self.tokenizer = load_lm_tokenizer(cfg.model, cfg.trust_remote_code)
        self.max_len = cfg.max_len
        if splits is None and upload is not None:
            rows, read_warnings = read_table(cfg.dataset, upload)
            splits = split_rows(cfg, rows, read_warnings)
        splits = splits or load_lm_splits(cfg.dataset, cfg.split_seed, cfg.max_train_samples,
                                          cfg.val_size or AUTO_VAL, cfg.test_size or AUTO_TEST)
        self.score = answer_scorer(splits.scorer)
        d = splits.dedup
        warnings = list(splits.warnings)
        if d.get("repeats_dropped") or d.get("conflicting_rows_dropped"):
            warnings.append(f"dropped {d['repeats_dropped']} repeated prompts and "
                            f"{d['conflicting_rows_dropped']} rows of "
                            f"{d['conflicting_texts']} prompts with conflicting answers before "
                            f"splitting; {d['kept']} of {d['rows']} rows kept")
        self.data = SimpleNamespace(warnings=warnings, label_names=None, source=cfg.dataset,
                                    scorer=splits.scorer, task=self.name, dedup=d or None,
                                    train_fingerprint=fingerprint(splits.train))
        needed: list[int] = []     # rows over max_len: one warning for the three splits
        self.train, self.val, self.test = (self._encode(s, needed) for s in
                                           (splits.train, splits.val, splits.test))
        n = len(splits.train) + len(splits.val) + len(splits.test)
        if w := cut_warning(needed, n, self.max_len):
            self.data.warnings.append(w)   # a cut target trains on less than it says
        self._base = None      # the shared LoRA base, loaded with the first arm
        self.samples: list[dict] = []  # the latest evaluation's sample generations

    def _encode(self, exs: list[LMExample], needed: list[int] | None = None) -> EncodedLM:
        return EncodedLM([encode(self.tokenizer, e, self.max_len, needed) for e in exs],
                         list(exs))

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
    def batch(self, e: EncodedLM, ids: list[int], device, view=None) -> Batch:
        """Inputs of the whole rows; labels and logits of their last K positions only.
        Targets end every row (prompt + target, left padding), so K = the longest target + 1
        (the position before a target predicts its first token) covers them all. Views are
        refused for decoders at validation (config.validate), so `view` is always None here. The LM head
        then runs on K positions instead of T: on arith-easy (T ~ 54, K ~ 4) that saves
        most of a step's largest tensor, (B, T, 49k) logits, and the head's matmul."""
        b = collate([e.rows[i] for i in ids], self.tokenizer.pad_token_id)
        labels = b.pop("labels")
        keep = min(int((labels != IGNORE).sum(1).max()) + 1, labels.shape[1])
        inputs = {k: v.to(device) for k, v in b.items()}
        inputs["logits_to_keep"] = keep
        return Batch(inputs, labels[:, -keep:].to(device))

    def forward(self, model, batch: Batch) -> torch.Tensor:
        return model(**batch.inputs).logits                                   # (N, T, V)

    def kd_mask(self, batch: Batch, n_carried: int) -> torch.Tensor:
        """Target tokens (after the shift) of the carried rows, (N, T-1). Alignment in the
        loss may distil fewer (a no-op in plain SFT)."""
        m = shift_labels(batch.labels) != IGNORE
        m[n_carried:] = False
        return m

    # -- teacher cache ----------------------------------------------------------------------
    def pack(self, cfg, logits, labels, use_step: int) -> list[dict[str, torch.Tensor]]:
        """One dict of tensors per sequence (TokenTeacher's fields); kept on the CPU, since
        the cache waits one step."""
        ts = make_teachers(logits, labels, cfg, use_step, kind=self.opt.cache, k=cfg.top_k,
                           per_token=self.opt.per_token)
        fields = [(i, f) for i, t in enumerate(ts) for f in _ENTRY if getattr(t, f) is not None]
        host = _to_cpu([getattr(ts[i], f) for i, f in fields])
        out: list[dict[str, torch.Tensor]] = [{} for _ in ts]
        for (i, f), v in zip(fields, host):
            out[i][f] = v
        return out

    def unpack(self, entries: list[dict], batch: Batch, device) -> list:
        teachers = [TokenTeacher(kind="full" if "logits" in e else "topk", **e) for e in entries]
        return teachers + [None] * (len(batch.labels) - len(entries))

    def loss(self, logits, batch: Batch, teacher):
        return token_loss(logits, batch.labels, teacher)

    def signal_record(self, entries: list[dict], parts) -> dict:
        """Mean token signals, agreement, and what the alignment kept: target tokens of the
        carried sequences that were distilled (aligned) or had no matching teacher (dropped)."""
        n_tgt = sum(len(e["target_ids"]) for e in entries)
        aligned = int(parts.aligned.sum())
        return {"u_mean": torch.cat([e["u"] for e in entries]).mean(),   # 0-dim tensors: the
                "d_mean": torch.cat([e["d"] for e in entries]).mean(),   # loop reads them at once
                "agreement": parts.agreement.mean() if parts.agreement.numel() else None,
                "aligned_tokens": aligned, "dropped_tokens": n_tgt - aligned,
                "kd_topk_mass": topk_mass(entries)}

    def token_view(self, batch: Batch, parts) -> dict | None:
        """Row 0 of the batch (the first carried sequence): its target tokens as text, with
        the alpha and the KD term (alpha * tau^2 * KL) each got; None where it got none."""
        y = shift_labels(batch.labels)[0]
        pos = (y != IGNORE).nonzero()[:, 0]
        if not len(pos) or not bool(parts.kd_mask[0].any()):
            return None

        def col(t):
            # 4 significant digits: enough to colour by, small files (alpha can be 1e-4)
            return [None if v != v else float(f"{v:.4g}") for v in t[0, pos].tolist()]
        ids = y[pos].tolist()
        # the prompt before the targets (no loss, no KD there): the app shows it greyed, so
        # a target like "7<|im_end|>" reads as the answer to its question
        ids_in = batch.inputs["input_ids"][0]
        # labels may cover only the end of the sequence (the target region): count from there
        first = (ids_in.numel() - batch.labels.shape[1]
                 + int((batch.labels[0] != IGNORE).nonzero()[0, 0]))
        mask = batch.inputs.get("attention_mask")
        keep = ids_in[:first] if mask is None else ids_in[:first][mask[0, :first].bool()]
        return {"prompt": self.tokenizer.decode(keep.tolist()),
                "tokens": [self.tokenizer.decode([i]) for i in ids], "token_ids": ids,
                "alpha": col(parts.alpha_tok), "kd": col(parts.kd_tok)}

    # -- evaluation -------------------------------------------------------------------------
    def split_metrics(self, model, e: EncodedLM, prefix: str, device, use_amp) -> dict:
        loss, ppl = target_loss(model, self.tokenizer, e.examples, self.max_len)
        ev = evaluate_generation(model, self.tokenizer, e.examples, self.score,
                                 self.opt.max_new_tokens, self.opt.gen_batch_size,
                                 self.opt.n_samples)
        # truncated: no eos among the generation's new tokens, it was cut off at
        # max_new_tokens (possibly before its answer); the app marks it
        self.samples = [dict(prompt=s["prompt"], generation=s["completion"],
                             extracted=s["extracted"], gold=s["answer"], correct=s["correct"],
                             truncated=s["truncated"], strict_correct=s["strict_correct"])
                        for s in ev.samples]
        return {f"{prefix}_loss": loss, f"{prefix}_perplexity": ppl,
                f"{prefix}_exact_match": ev.accuracy,
                f"{prefix}_strict_exact_match": ev.strict_accuracy,
                f"{prefix}_truncated": ev.truncated}

    @torch.no_grad()
    def _probe(self, model, ids: list[int], device) -> torch.Tensor:
        """Log-probs at the probe samples' target tokens, (M, V)."""
        was = model.training
        model.eval()
        try:
            b = self.batch(self.train, ids, device)
            z, y = causal_shift(self.forward(model, b), b.labels)
            # fp16: 64 probe sequences x 3 target tokens x V = 49k is 38 MB in fp32, held
            # by every arm and saved in its checkpoint
            return F.log_softmax(z[y != IGNORE].float(), -1).half().cpu()
        finally:
            model.train(was)

    def evaluate(self, model, probe_ids, probe_prev, device, use_amp):
        out = self.split_metrics(model, self.val, "val", device, use_amp)
        cur = self._probe(model, probe_ids, device)
        out["probe_drift"] = None if probe_prev is None else float(
            F.kl_div(cur.float(), probe_prev.float(), log_target=True,
                     reduction="none").sum(-1).mean())
        return out, cur

    def test_metrics(self, model, device, use_amp) -> dict:
        out = self.split_metrics(model, self.test, "test", device, use_amp)
        # what echoing the question scores (flexible rule): the floor to read exact match by
        out["test_echo_share"] = echo_share(self.test.examples, self.score)
        return out
