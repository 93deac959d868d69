"""Step time of DynSDPBTrainer against plain transformers.Trainer, side by side in one process.

Same model (MiniLM from its package, the same initial weights), same data (the built-in tweets),
same TrainingArguments, every row padded to --max-len tokens (so the different data orders
cost the same); the trainers take turns (A B C D, then B C D A, ...) so a slower
machine moment hits each of them. A step's time is the wall time between two consecutive
optimizer-step ends (data, forward, backward, clip, update). Each run's first `--warmup` steps
are dropped. Prints each trainer's median step time and its ratio to Trainer's.

    OMP_WAIT_POLICY=PASSIVE python examples/hf_trainer_speed.py --repeats 3 --steps 7 \
        --batch-size 8 --threads 1

Trainers:
  Trainer               plain fine-tuning, B rows per step
  DynSDPB vanilla       DynSDPBTrainer(method=vanilla): the same B rows, through its data path
  DynSDPB dynsdpb       budget epochs (the default): B new + B carried rows per step
  DynSDPB dynsdpb/comp  budget compute: B/2 new + B/2 carried, B rows per step as Trainer
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

from transformers import (AutoModelForSequenceClassification, AutoTokenizer,
                          DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments)

from dynsdpb.integrations import DynSDPBTrainer


class StepClock(TrainerCallback):
    def __init__(self):
        self.ends: list[float] = []

    def on_step_end(self, args, state, control, **kw):
        self.ends.append(time.perf_counter())


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-len", type=int, default=48, help="every row padded to this")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    ap.add_argument("--out", default="hf-speed")
    a = ap.parse_args(argv)

    import sys
    from pathlib import Path

    import torch
    if a.threads:
        torch.set_num_threads(a.threads)
    sys.path.insert(0, str(Path(__file__).parent))
    from hf_trainer import load_rows, model_folder

    train, _, labels = load_rows(max(400, a.batch_size * (a.steps + 2) * 2), 16)
    tok = AutoTokenizer.from_pretrained(model_folder())
    # Every row padded to the same length: the trainers draw their rows in different orders,
    # and a batch's padded length would otherwise differ with the order, not with the trainer.
    train = train.map(lambda b: tok(b["text"], truncation=True, max_length=a.max_len,
                                    padding="max_length"), batched=True)
    base = AutoModelForSequenceClassification.from_pretrained(model_folder(),
                                                              num_labels=len(labels))
    kinds = {"Trainer": (Trainer, {}),
             "DynSDPB vanilla": (DynSDPBTrainer, {"method": "vanilla"}),
             "DynSDPB dynsdpb": (DynSDPBTrainer, {"method": "dynsdpb"}),
             "DynSDPB dynsdpb/comp": (DynSDPBTrainer, {"method": "dynsdpb", "budget": "compute"})}
    names = list(kinds)
    times: dict[str, list[float]] = {k: [] for k in names}
    per_repeat: dict[str, list[float]] = {k: [] for k in names}   # each run's median
    for r in range(a.repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            cls, extra = kinds[name]
            args = TrainingArguments(output_dir=a.out, max_steps=a.steps,
                                     per_device_train_batch_size=a.batch_size,
                                     learning_rate=5e-5, logging_steps=10 ** 6,
                                     save_strategy="no", report_to=[], seed=0,
                                     disable_tqdm=True)
            clock = StepClock()
            cls(model=copy.deepcopy(base), args=args, train_dataset=train,
                data_collator=DataCollatorWithPadding(tok), callbacks=[clock], **extra).train()
            got = [b - e for e, b in zip(clock.ends, clock.ends[1:])][a.warmup:]
            times[name] += got
            per_repeat[name].append(statistics.median(got))
            print(f"repeat {r + 1} {name:22s} median step {statistics.median(got) * 1000:8.1f} ms",
                  flush=True)
    ref = statistics.median(times["Trainer"])
    out = {}
    for name in names:
        med = statistics.median(times[name])
        paired = [x / y for x, y in zip(per_repeat[name], per_repeat["Trainer"])]
        out[name] = {"median_s": med, "ratio": med / ref, "n": len(times[name]),
                     "ratio_per_repeat": paired}
        print(f"{name:22s} median step {med * 1000:8.1f} ms  ratio to Trainer {med / ref:5.2f}"
              f"  (n = {len(times[name])} steps; per repeat {min(paired):.2f}-"
              f"{max(paired):.2f})")
    return out


if __name__ == "__main__":
    main()
