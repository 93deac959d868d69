"""`dynsdpb bench [--json]`: speed and memory as ratios measured side by side in one run.

Absolute times on a shared machine are noise; a ratio of two things measured in the same run,
interleaved, mostly is not. Each figure (issue #12):

  dynsdpb_vs_vanilla_step_time   median DynSDPB step time / median vanilla step time, equal
                                 samples forwarded per step (budget: compute), lockstep arms.
                                 Goal <= 1.05.
  vanilla_vs_hf_trainer_throughput
                                 our vanilla samples/s / transformers.Trainer samples/s on the
                                 same model, data order, batch size, max length, optimizer
                                 (AdamW, decay on matrices only), linear schedule and steps,
                                 Trainer's logging and saving off. Goal >= 1.0.
  mfu                            model FLOP/s of our vanilla run (6 x non-embedding parameters
                                 x tokens/s, padding excluded) / fp32 matmul FLOP/s measured
                                 here (torch.mm, 1024^3). Goal >= 0.5 on CPU.
  experiment_overhead            wall time of a whole compare (create + load + train + eval +
                                 test + write) / the sum of its arms' training-step time.
  peak_rss_ratio                 peak RSS of a DynSDPB run / a vanilla run, each in a process
                                 of its own.

The arithmetic lives in small pure functions (`ratio`, `median_step_times`, `mfu`) that the
tests check on a tiny model; the timings themselves are only printed.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .config import RunConfig

GOALS = {"dynsdpb_vs_vanilla_step_time": ("<=", 1.05),
         "vanilla_vs_hf_trainer_throughput": (">=", 1.0),
         "mfu": (">=", 0.5)}


# ----------------------------------------------------------------------------------------
# pure arithmetic

def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def median_step_times(records: list[dict], skip: int = 1) -> list[float]:
    """Per-step training time from the records' cumulative `wall_time` (evaluation excluded);
    the first `skip` steps (allocations, lazy init) are left out."""
    wt = [r["wall_time"] for r in records if r.get("wall_time") is not None]
    return [b - a for a, b in zip(wt, wt[1:])][max(0, skip - 1):]


def mfu(non_embedding_params: int, tokens_per_s: float, peak_flops: float) -> float:
    """Model FLOP utilisation: 6 N FLOPs per trained token (forward 2N + backward 4N)."""
    return 6.0 * non_embedding_params * tokens_per_s / peak_flops


def non_embedding_params(model) -> int:
    emb = {id(p) for m in model.modules() if isinstance(m, __import__("torch").nn.Embedding)
           for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in emb)


def matmul_flops(n: int = 1024, reps: int = 5) -> float:
    """fp32 matmul FLOP/s of this machine, now (the best of `reps`)."""
    import torch
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)                                   # warm up the BLAS threads
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best


def check_goals(out: dict) -> dict:
    met = {}
    for k, (op, goal) in GOALS.items():
        v = out.get(k)
        if v is not None:
            met[k] = (v <= goal) if op == "<=" else (v >= goal)
    return met


# ----------------------------------------------------------------------------------------
# measurements

def _bench_config(model: str, dataset: str, steps: int, **kw) -> RunConfig:
    base = dict(model=model, dataset=dataset, steps=steps, batch_size=16, max_len=64,
                max_train_samples=max(400, 16 * steps), val_size=64, test_size=64,
                eval_every=10 ** 6, checkpoint_every=0, save_model=False, warmup_ratio=0.1,
                probe_size=8)
    base.update(kw)
    return RunConfig(**base)


def step_time_ratio(cfg: RunConfig, workdir: Path) -> dict:
    """vanilla and dynsdpb in lockstep at budget compute: median step time of each."""
    from .experiment import create_experiment, run_experiment
    from .store import RunDir
    exp = create_experiment(workdir, cfg.replace(budget="compute"), ["vanilla", "dynsdpb"],
                            [cfg.seed], exp_dir=workdir / "step-time")
    t0 = time.perf_counter()
    run_experiment(exp)
    wall = time.perf_counter() - t0
    med, train_s, recs = {}, 0.0, {}
    for m in ("vanilla", "dynsdpb"):
        rd = RunDir(exp / f"{m}-s{cfg.seed}")
        recs[m] = rd.metrics()
        med[m] = statistics.median(median_step_times(recs[m]))
        train_s += recs[m][-1]["wall_time"]
    return {"median_step_s": med, "records": recs, "wall_s": wall, "train_s": train_s,
            "dynsdpb_vs_vanilla_step_time": ratio(med["dynsdpb"], med["vanilla"])}


def hf_trainer_throughput(cfg: RunConfig, workdir: Path) -> tuple[float, int]:
    """transformers.Trainer samples/s on our model, data, order, optimizer and schedule."""
    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments
    from transformers.utils import logging as hf_logging

    from .layout import BatchLayout
    from .tasks import prepare
    hf_logging.set_verbosity_error()
    task = prepare(cfg)
    torch.manual_seed(cfg.seed)
    model = task.build_model(cfg, "hf-trainer")
    n = len(task.train)
    lay = BatchLayout(n, cfg.batch_size, cfg.seed, distill=False)
    order = [i for t in range(cfg.steps) for i in lay.batch(t).ids]     # our exact data order

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(order)

        def __getitem__(self, k):
            i = order[k]
            row = {"input_ids": task.train.input_ids[i], "labels": int(task.train.labels[i])}
            if task.train.token_type_ids is not None:
                row["token_type_ids"] = task.train.token_type_ids[i]
            return row

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter())

    args = TrainingArguments(
        output_dir=str(workdir / "hf"), per_device_train_batch_size=cfg.batch_size,
        max_steps=cfg.steps, learning_rate=cfg.lr, weight_decay=cfg.weight_decay,
        warmup_steps=int(cfg.warmup_ratio * cfg.steps), lr_scheduler_type="linear",
        max_grad_norm=cfg.grad_clip, optim="adamw_torch", logging_strategy="no",
        save_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True,
        dataloader_num_workers=0, seed=cfg.seed)
    trainer = Trainer(model=model, args=args, train_dataset=Rows(), callbacks=[Clock()],
                      data_collator=DataCollatorWithPadding(task.tokenizer))
    # Our sampler is the layout: keep Trainer from reshuffling.
    trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(Rows())
    import contextlib
    with contextlib.redirect_stdout(sys.stderr):     # Trainer prints its summary dict
        trainer.train()
    dts = [b - a for a, b in zip(times, times[1:])]
    return cfg.batch_size / statistics.median(dts), non_embedding_params(model)


def _peak_rss_child(cfg: RunConfig, method: str, workdir: Path) -> int:
    """Peak RSS (bytes) of one run in a process of its own."""
    out = workdir / f"rss-{method}"
    code = ("import sys, json; from dynsdpb.config import from_dict; "
            "from dynsdpb.experiment import create_experiment, run_experiment; "
            "c = from_dict(json.loads(sys.argv[1])); "
            "run_experiment(create_experiment(sys.argv[2], c, [c.method], [c.seed], "
            "exp_dir=__import__('pathlib').Path(sys.argv[2])))")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(cfg.replace(
        method=method).to_dict()), str(out)], env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"the {method} run for peak RSS failed ({proc.returncode})")
    return int(usage.ru_maxrss) * 1024          # Linux reports KiB


def run(model: str = "minilm-l6", dataset: str = "tweets-sentiment", steps: int = 30,
        log=None, **cfg_kw) -> dict:
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    work = Path(tempfile.mkdtemp(prefix="dynsdpb-bench-"))
    cfg = _bench_config(model, dataset, steps, **cfg_kw)
    out: dict = {"model": model, "dataset": dataset, "steps": steps,
                 "batch_size": cfg.batch_size, "max_len": cfg.max_len}

    log("1/4 vanilla and dynsdpb in lockstep (budget compute)")
    st = step_time_ratio(cfg, work)
    out["median_step_s"] = st["median_step_s"]
    out["dynsdpb_vs_vanilla_step_time"] = st["dynsdpb_vs_vanilla_step_time"]
    out["experiment_overhead"] = ratio(st["wall_s"], st["train_s"])

    log("2/4 transformers.Trainer on the same model, data and schedule")
    hf_sps, n_params = hf_trainer_throughput(cfg, work)
    ours = cfg.batch_size / st["median_step_s"]["vanilla"]
    out["samples_per_s"] = {"ours_vanilla": ours, "hf_trainer": hf_sps}
    out["vanilla_vs_hf_trainer_throughput"] = ratio(ours, hf_sps)

    log("3/4 fp32 matmul peak and MFU")
    from .tasks import prepare
    task = prepare(cfg)
    ids = task.train.input_ids
    tokens_per_sample = statistics.mean(len(x) for x in ids)     # no padding counted
    peak = matmul_flops()
    out["matmul_flops"] = peak
    out["non_embedding_params"] = n_params
    out["mfu"] = mfu(n_params, ours * tokens_per_sample, peak)

    log("4/4 peak memory, each run in its own process")
    small = cfg.replace(steps=min(steps, 10))
    rss = {m: _peak_rss_child(small, m, work) for m in ("vanilla", "dynsdpb")}
    out["peak_rss_bytes"] = rss
    out["peak_rss_ratio"] = ratio(rss["dynsdpb"], rss["vanilla"])
    out["goals"] = {k: f"{op} {g}" for k, (op, g) in GOALS.items()}
    out["goals_met"] = check_goals(out)
    return out
