"""The workbench's own runs in the trackers users already run: `--report-to tensorboard` on
train, compare, resume and sweep writes every record's numbers as TensorBoard scalars, one
TensorBoard run per arm (`<folder>/tensorboard/<arm>`), tagged with the record's keys
(records.py: loss, ce, kd, alpha, tau, val_accuracy, ...) at the record's step."""
from __future__ import annotations

import math
from pathlib import Path

from dynsdpb.errors import ConfigError
from dynsdpb.records import RECORD_KEYS

REPORT_TO = ("none", "tensorboard")
# Bookkeeping, not measurements: not plotted.
SKIP = {"step", "time", "seed", "epoch"}


def check_report_to(value: str) -> None:
    """Refuse an unknown tracker, or a missing extra, before anything is created."""
    if value not in REPORT_TO:
        raise ConfigError.one("report_to", value, f"use one of {', '.join(REPORT_TO)}")
    if value == "tensorboard":
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError:
            raise ConfigError.one("report_to", value, "TensorBoard is not installed: pip "
                                  "install 'dynsdpb[tensorboard]' (or pip install tensorboard)"
                                  ) from None


class TensorBoardScalars:
    """One SummaryWriter per arm under `root`; `write(arm, rec)` adds the record's numbers.

    A resumed arm's first record purges the events written after it (the steps the resume
    repeats), as the metrics file drops its records after the checkpoint."""

    def __init__(self, root: str | Path):
        check_report_to("tensorboard")
        self.root = Path(root)
        self.writers: dict = {}

    def write(self, arm: str, rec: dict) -> None:
        step = rec.get("step")
        if step is None:
            return
        w = self.writers.get(arm)
        if w is None:
            from torch.utils.tensorboard import SummaryWriter
            w = self.writers[arm] = SummaryWriter(str(self.root / arm), purge_step=int(step),
                                                  flush_secs=10)
        for k in RECORD_KEYS:
            v = rec.get(k)
            if k in SKIP or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if math.isfinite(v):
                w.add_scalar(k, float(v), int(step))

    def write_all(self, arm: str, records: list[dict]) -> None:
        for r in records:
            self.write(arm, r)
        self.flush()

    def flush(self) -> None:
        for w in self.writers.values():
            w.flush()

    def close(self) -> None:
        for w in self.writers.values():
            w.close()
        self.writers.clear()
