"""`dynsdpb bench [--decoder] [--json]`: speed and memory as ratios measured side by side in
one run.

Absolute times on a shared machine are noise; a ratio of two things measured in the same run,
interleaved, mostly is not. Each figure (issue #12), for the built-in encoder (this module;
`--decoder`: bench/decoder.py, same figures on SmolLM2 with LoRA plus the teacher cache):

  dynsdpb_vs_vanilla_step_time   median DynSDPB step time / median vanilla step time, equal
                                 samples forwarded per step (budget: compute), lockstep arms.
                                 Goal <= 1.05 (decoder: <= 1.10).
  vanilla_vs_hf_trainer_throughput
                                 our vanilla samples/s / transformers.Trainer samples/s on the
                                 same model, data order, batch size, max length, optimizer
                                 (AdamW, decay on matrices only), linear schedule and steps,
                                 Trainer's logging and saving off. Ours is a vanilla run alone
                                 (one arm, as Trainer trains one model), run just before
                                 Trainer; the lockstep arm's figure is kept next to it
                                 (`samples_per_s.ours_vanilla_lockstep`). Goal >= 1.0.
  mfu                            model FLOP/s of our vanilla run (6 x non-embedding parameters
                                 x tokens/s, padding excluded; frozen parameters count 4, see
                                 `flops_per_token`) / fp32 matmul FLOP/s measured here
                                 (torch.mm, 1024^3). Goal >= 0.5 on CPU (encoder).
  experiment_overhead            wall time of a whole compare (create + load + train + eval +
                                 test + write) / the sum of its arms' training-step time.
  peak_rss_ratio                 peak RSS of a DynSDPB run / a vanilla run, each in a process
                                 of its own.

The arithmetic lives in small pure functions (`ratio`, `median_step_times`, `flops_per_token`,
`mfu`, `check_goals`) that the tests check on a tiny model; the timings are only printed. The
measuring helpers (`step_time_ratio`, `hf_train_timed`, `peak_rss`) serve both modes.
"""
from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dynsdpb.config import RunConfig

GOALS = {"dynsdpb_vs_vanilla_step_time": ("<=", 1.05),
         "vanilla_vs_hf_trainer_throughput": (">=", 1.0),
         "mfu": (">=", 0.5)}
# The figures the CLI prints, in order.
FIGURES = ("dynsdpb_vs_vanilla_step_time", "vanilla_vs_hf_trainer_throughput", "mfu",
           "experiment_overhead", "peak_rss_ratio")


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


def flops_per_token(non_embedding_params: int, frozen: int = 0) -> float:
    """Training FLOPs per token: forward 2N, backward 4N (activation gradients 2N, weight
    gradients 2N). A frozen parameter skips its weight gradient: 4 per token instead of 6
    (LoRA: the whole base). `frozen` counts the frozen ones among `non_embedding_params`."""
    return 6.0 * non_embedding_params - 2.0 * frozen


def mfu(non_embedding_params: int, tokens_per_s: float, peak_flops: float,
        frozen: int = 0) -> float:
    """Model FLOP utilisation: flops_per_token x tokens/s / the machine's peak (6 N FLOPs per
    trained token when nothing is frozen)."""
    return flops_per_token(non_embedding_params, frozen) * tokens_per_s / peak_flops


def non_embedding_params(model, frozen_only: bool = False) -> int:
    """Parameters outside embeddings (a tied LM head is the embedding); `frozen_only`: of
    those, the ones that do not train."""
    emb = {id(p) for m in model.modules() if isinstance(m, __import__("torch").nn.Embedding)
           for p in m.parameters()}
    return sum(p.numel() for p in model.parameters()
               if id(p) not in emb and not (frozen_only and p.requires_grad))


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


def check_goals(out: dict, goals: dict = GOALS) -> dict:
    met = {}
    for k, (op, goal) in goals.items():
        v = out.get(k)
        if v is not None:
            met[k] = (v <= goal) if op == "<=" else (v >= goal)
    return met


@contextlib.contextmanager
def phase(out: dict, name: str, log, message: str):
    """Log `message`, then keep the seconds the block took in out["phase_s"][name] (what a
    bench costs, so the next one can be sized; not a figure)."""
    log(message)
    t0 = time.perf_counter()
    yield
    out.setdefault("phase_s", {})[name] = round(time.perf_counter() - t0, 2)


def with_goals(out: dict, goals: dict) -> dict:
    out["goals"] = {k: f"{op} {g}" for k, (op, g) in goals.items()}
    out["goals_met"] = check_goals(out, goals)
    return out


# ----------------------------------------------------------------------------------------
# measurements (both modes)

def _bench_config(model: str, dataset: str, steps: int, **kw) -> RunConfig:
    base = dict(model=model, dataset=dataset, steps=steps, batch_size=16, max_len=64,
                max_train_samples=max(400, 16 * steps), val_size=64, test_size=64,
                eval_every=10 ** 6, checkpoint_every=0, save_model=False, warmup_ratio=0.1,
                probe_size=8)
    base.update(kw)
    return RunConfig(**base)


def run_finished(exp: Path) -> float:
    """run_experiment(exp) and its wall seconds. An arm that did not finish (run_arms fails
    one arm and goes on) is an error naming its reason, not a figure from half a run."""
    from dynsdpb.experiment import run_experiment
    from dynsdpb.store import RunDir
    t0 = time.perf_counter()
    states = run_experiment(exp)["states"]
    wall = time.perf_counter() - t0
    for arm, state in states.items():
        if state != "finished":
            err = RunDir(Path(exp) / arm).status().get("error", "")
            raise RuntimeError(f"bench run {arm} ended {state}: {err}")
    return wall


def step_time_ratio(cfg: RunConfig, workdir: Path, out: dict | None = None) -> dict:
    """vanilla and dynsdpb in lockstep at budget compute: median step time of each. With
    `out`, its figures (median_step_s, the step-time ratio, experiment_overhead) go there."""
    from dynsdpb.experiment import create_experiment
    from dynsdpb.store import RunDir
    exp = create_experiment(workdir, cfg.replace(budget="compute"), ["vanilla", "dynsdpb"],
                            [cfg.seed], exp_dir=workdir / "step-time")
    wall = run_finished(exp)
    med, train_s, recs = {}, 0.0, {}
    for m in ("vanilla", "dynsdpb"):
        rd = RunDir(exp / f"{m}-s{cfg.seed}")
        recs[m] = rd.metrics()
        med[m] = statistics.median(median_step_times(recs[m]))
        train_s += recs[m][-1]["wall_time"]
    st = {"median_step_s": med, "records": recs, "wall_s": wall, "train_s": train_s,
          "dynsdpb_vs_vanilla_step_time": ratio(med["dynsdpb"], med["vanilla"])}
    if out is not None:
        out["median_step_s"] = med
        out["dynsdpb_vs_vanilla_step_time"] = st["dynsdpb_vs_vanilla_step_time"]
        out["experiment_overhead"] = ratio(wall, train_s)
    return st


def vanilla_alone_step_s(cfg: RunConfig, workdir: Path) -> float:
    """Median step time of a vanilla run alone: one arm, nothing in lockstep with it (two arms
    take turns on the cores' caches, and a decoder's arms switch adapters on one base)."""
    from dynsdpb.experiment import create_experiment
    from dynsdpb.store import RunDir
    exp = create_experiment(workdir, cfg, ["vanilla"], [cfg.seed],
                            exp_dir=workdir / "vanilla-alone")
    run_finished(exp)
    return statistics.median(median_step_times(RunDir(exp / f"vanilla-s{cfg.seed}").metrics()))


def throughput_vs_hf(out: dict, batch_size: int, alone_step_s: float,
                     hf_samples_per_s: float) -> float:
    """Our vanilla samples/s alone (batch / `alone_step_s`), the lockstep arm's (from
    out["median_step_s"]) and the ratio of ours alone to Trainer's into `out`; returns ours."""
    ours = batch_size / alone_step_s
    out["median_step_s"]["vanilla_alone"] = alone_step_s
    lockstep = batch_size / out["median_step_s"]["vanilla"]
    out["samples_per_s"] = {"ours_vanilla": ours, "hf_trainer": hf_samples_per_s,
                            "ours_vanilla_lockstep": lockstep}
    out["vanilla_vs_hf_trainer_throughput"] = ratio(ours, hf_samples_per_s)
    return ours


def vanilla_order(cfg: RunConfig, n: int) -> list[int]:
    """The training-set ids our vanilla arm trains on, step after step."""
    from dynsdpb.engine.layout import BatchLayout
    lay = BatchLayout(n, cfg.batch_size, cfg.seed, distill=False)
    return [i for t in range(cfg.steps) for i in lay.batch(t).ids]


def hf_train_timed(model, rows: list[dict], collator, cfg: RunConfig, workdir: Path,
                   **args_kw) -> dict:
    """transformers.Trainer on `model` over `rows` in their order (no reshuffle: our layout
    is the sampler), with our batch size, steps, AdamW, linear schedule and clipping, its
    logging and saving off. Returns samples_per_s (batch / median step time), the step times
    and Trainer's mean training loss."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.utils import logging as hf_logging

    from dynsdpb.engine.dist import pick_device
    hf_logging.set_verbosity_error()
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter())

    cuda = pick_device(cfg).type == "cuda"          # ours: bf16 autocast on CUDA
    args = TrainingArguments(
        output_dir=str(workdir / "hf"), per_device_train_batch_size=cfg.batch_size,
        max_steps=cfg.steps, learning_rate=cfg.lr, weight_decay=cfg.weight_decay,
        warmup_steps=int(cfg.warmup_ratio * cfg.steps), lr_scheduler_type="linear",
        max_grad_norm=cfg.grad_clip, optim="adamw_torch", logging_strategy="no",
        save_strategy="no", report_to=[], disable_tqdm=True, use_cpu=not cuda, bf16=cuda,
        dataloader_num_workers=0, seed=cfg.seed, remove_unused_columns=False, **args_kw)
    trainer = Trainer(model=model, args=args, train_dataset=rows, callbacks=[Clock()],
                      data_collator=collator)
    trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(rows)
    with contextlib.redirect_stdout(sys.stderr):     # Trainer prints its summary dict
        res = trainer.train()
    dts = [b - a for a, b in zip(times, times[1:])]
    return {"samples_per_s": cfg.batch_size / statistics.median(dts), "step_s": dts,
            "train_loss": float(res.training_loss)}


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


def peak_rss(cfg: RunConfig, workdir: Path, out: dict, steps: int = 10) -> None:
    """peak_rss_bytes and peak_rss_ratio (dynsdpb / vanilla) of short runs (`steps` at most)
    into `out`."""
    small = cfg.replace(steps=min(cfg.steps, steps))
    rss = {m: _peak_rss_child(small, m, workdir) for m in ("vanilla", "dynsdpb")}
    out["peak_rss_bytes"] = rss
    out["peak_rss_ratio"] = ratio(rss["dynsdpb"], rss["vanilla"])


# ----------------------------------------------------------------------------------------
# the encoder

def hf_trainer_throughput(cfg: RunConfig, workdir: Path) -> tuple[float, int]:
    """transformers.Trainer samples/s on our model, data, order, optimizer and schedule."""
    import torch
    from transformers import DataCollatorWithPadding

    from dynsdpb.tasks import prepare
    task = prepare(cfg)
    torch.manual_seed(cfg.seed)
    model = task.build_model(cfg, "hf-trainer")
    tr = task.train
    rows = []
    for i in vanilla_order(cfg, len(tr)):
        row = {"input_ids": tr.input_ids[i], "labels": int(tr.labels[i])}
        if tr.token_type_ids is not None:
            row["token_type_ids"] = tr.token_type_ids[i]
        rows.append(row)
    res = hf_train_timed(model, rows, DataCollatorWithPadding(task.tokenizer), cfg, workdir)
    return res["samples_per_s"], non_embedding_params(model)


def run(model: str = "minilm-l6", dataset: str = "tweets-sentiment", steps: int = 30,
        log=None, **cfg_kw) -> dict:
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    work = Path(tempfile.mkdtemp(prefix="dynsdpb-bench-"))
    cfg = _bench_config(model, dataset, steps, **cfg_kw)
    out: dict = {"mode": "encoder", "model": model, "dataset": dataset, "steps": steps,
                 "batch_size": cfg.batch_size, "max_len": cfg.max_len}

    with phase(out, "compare", log, "1/4 vanilla and dynsdpb in lockstep (budget compute)"):
        step_time_ratio(cfg, work, out)

    with phase(out, "hf_trainer", log, "2/4 our vanilla alone, then transformers.Trainer on "
               "the same model, data and schedule"):
        alone = vanilla_alone_step_s(cfg, work)
        hf_sps, n_params = hf_trainer_throughput(cfg, work)
    ours = throughput_vs_hf(out, cfg.batch_size, alone, hf_sps)

    with phase(out, "mfu", log, "3/4 fp32 matmul peak and MFU"):
        from dynsdpb.tasks import prepare
        task = prepare(cfg)
        ids = task.train.input_ids
        tokens_per_sample = statistics.mean(len(x) for x in ids)     # no padding counted
        peak = matmul_flops()
    out["matmul_flops"] = peak
    out["non_embedding_params"] = n_params
    out["mfu"] = mfu(n_params, ours * tokens_per_sample, peak)
    out["mfu_formula"] = "6 N x tokens/s / fp32 matmul FLOP/s; N = non-embedding parameters"

    with phase(out, "peak_rss", log, "4/4 peak memory, each run in its own process"):
        peak_rss(cfg, work, out)
    return with_goals(out, GOALS)
