"""The task seam: what the training loop (`engine.train.Arm`) needs of one kind of data and model.

The loop does the DLB bookkeeping (which ids are new and which are carried, the teacher cache in
chunk order, RNG, checkpoints) and the optimizer step. It never looks at what a sample is. A task
owns the rest (method.md §1-4, §7), through the hooks of `Task` below, and nothing else: the loop
calls no other attribute. The families implement it: `encoder.task` (classification,
regression) and `decoder.task` (causal LM); `tasks.py` picks one for a config.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence, runtime_checkable

import torch


@dataclass
class Batch:
    inputs: dict[str, torch.Tensor]   # what the model's forward takes
    labels: torch.Tensor              # (N,) class ids or targets; (N, T) token ids for an LM


@dataclass(frozen=True)
class View:
    """Which view a training forward draws (encoder/views.py): the run's seed and the step that
    forwards the batch; the task adds each sample's id. None: the sample as it is."""
    seed: int
    step: int


@runtime_checkable
class Task(Protocol):
    """The hooks the loop calls. Every task implements every one of them."""

    name: str                 # "classification" | "regression" | "causal-lm"
    train: Sequence           # encoded splits (`len(split)` samples)
    val: Sequence
    test: Sequence
    data: Any                 # label_names, source, task: what the summary reads
    tokenizer: Any
    primary_metric: str       # the val/test metric that ranks runs (accuracy, exact_match, ...)
    samples: Sequence         # the last evaluation's sample generations (empty for encoders);
                              # the arm appends them to samples.jsonl

    def build_model(self, cfg, arm: str) -> torch.nn.Module:
        """The arm's model (torch's global RNG seeded by the loop; `arm` names it, e.g. for a
        LoRA adapter)."""

    def batch(self, split, ids: list[int], device: torch.device, view: View | None = None
              ) -> Batch:
        """Model inputs and labels of those samples; `view` (training forwards only): each
        sample's own augmented view, or refuse views at validation time (decoders)."""

    def forward(self, model, batch: Batch) -> torch.Tensor:
        """Logits: (N, C) classes, (N,) regression, (N, T, V) tokens for a causal LM."""

    def pack(self, cfg, logits: torch.Tensor, labels: torch.Tensor, use_step: int) -> list[dict]:
        """One teacher-cache entry per sample: its logits (full rows or top-k) with the
        alpha/tau fixed now, and the signals behind them."""

    def unpack(self, entries: list[dict], batch: Batch, device: torch.device):
        """The teacher laid over the batch, as `loss` takes it."""

    def loss(self, logits: torch.Tensor, batch: Batch, teacher):
        """LossParts-like: total, ce, kd, and per distilled position alpha, tau, logit_drift,
        agreement."""

    def signal_record(self, entries: list[dict], parts) -> dict:
        """Record keys that describe the teachers (u_mean, ...): numbers or 0-dim tensors (the
        loop reads a step's tensors to the host in one transfer)."""

    def evaluate(self, model, probe_ids: list[int], probe_prev, device: torch.device,
                 use_amp: bool) -> tuple[dict, Any]:
        """(val metrics + probe_drift, the probe's outputs)."""

    def test_metrics(self, model, device: torch.device, use_amp: bool) -> dict:
        """test_* metrics of the final model."""

    def token_view(self, batch: Batch, parts) -> dict | None:
        """Per-token alpha/KD of one carried sample, or None (encoders: no tokens); the arm
        writes it at evaluation steps to tokens.jsonl."""


# The hooks above, by name: a test checks that every task defines each of them.
HOOKS = ("build_model", "batch", "forward", "pack", "unpack", "loss",
         "signal_record", "evaluate", "test_metrics", "token_view")
# Hooks a task may leave out; the loop checks for them. drift_of(prev, cur) -> float: how far
# logits moved, which splits the logit drift into its update and dropout parts (encoders).
OPTIONAL_HOOKS = ("drift_of",)
