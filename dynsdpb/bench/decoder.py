"""`dynsdpb bench --decoder [--json]`: the bench's ratios for the built-in decoder.

SmolLM2-135M with LoRA on arith-easy, as the preset decoder-quick-demo trains it (batch 4,
max_len 64, r 8 on every attention and MLP projection, top-64 teacher cache), with steps and
budget compute set by the bench. Every figure is a ratio of two things measured in this run
(bench.py explains why):

  dynsdpb_vs_vanilla_step_time   median DynSDPB step time (top-k teacher cache) / median
                                 vanilla step time, budget compute, lockstep arms on one
                                 shared base. Goal <= 1.10.
  vanilla_vs_hf_trainer_throughput
                                 our vanilla samples/s (a run alone, as in bench.py) /
                                 transformers.Trainer samples/s with a plain peft LoRA model
                                 of the same r, alpha, dropout, targets and initial
                                 weights, our data order, batch size, max length
                                 and collation (left padding), labels -100 off the target
                                 tokens, AdamW, linear schedule, clipping and steps; logging
                                 and saving off. Trainer's model computes its loss from the
                                 logits of every position; ours keeps the target positions'
                                 only (CausalLMTask.batch): that saving is ours. Goal >= 1.0.
  mfu                            `mfu_formula`: (4 N_frozen + 6 N_lora) x tokens/s / fp32
                                 matmul FLOP/s measured here. A frozen base skips its
                                 weight-gradient matmuls, so it costs 4 FLOPs per parameter
                                 and token (forward 2, activation gradients 2), the adapter 6.
                                 N: non-embedding parameters (SmolLM2's LM head is tied to the
                                 embedding: not counted); tokens: non-padding prompt + target
                                 tokens. No goal.
  experiment_overhead            wall time of the whole lockstep compare / the sum of its arms'
                                 training-step time.
  kd_cache_bytes_ratio           teacher-cache bytes top-k / full, measured: the records'
                                 kd_cache_bytes of the compare's dynsdpb arm and of a short
                                 `kd_cache: full` dynsdpb run (same data, order and seed, so the
                                 same carried tokens), summed over the steps both recorded.
                                 Goal <= 0.01. `cache_bytes_per_token` is the expectation.
  peak_rss_ratio                 peak RSS of a DynSDPB run / a vanilla run (4 steps at most:
                                 the cache is full from step 2; loading and the final
                                 generations cost the most, ~30 s a run), each in a process of
                                 its own. `run(rss=False)` skips it.

`phase_s` in the JSON: seconds each part took (what a bench costs; not a figure). A smoke run
with --steps 4 on 2 busy CPU cores took about 3 minutes.
"""
from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

from dynsdpb.bench import speed as B
from dynsdpb.config import RunConfig

PRESET = "decoder-quick-demo"
GOALS = {"dynsdpb_vs_vanilla_step_time": ("<=", 1.10),
         "vanilla_vs_hf_trainer_throughput": (">=", 1.0),
         "kd_cache_bytes_ratio": ("<=", 0.01)}
FIGURES = ("dynsdpb_vs_vanilla_step_time", "vanilla_vs_hf_trainer_throughput", "mfu",
           "experiment_overhead", "kd_cache_bytes_ratio", "peak_rss_ratio")
RSS_STEPS = 4
MFU_FORMULA = ("(4 N_frozen + 6 N_lora) x tokens/s / fp32 matmul FLOP/s; N = non-embedding "
               "parameters, tokens = non-padding prompt+target tokens")
KD_CACHE_SOURCE = "records: kd_cache_bytes of the compare's dynsdpb arm / a kd_cache full run"


# ----------------------------------------------------------------------------------------
# pure arithmetic

def cache_bytes_per_token(kind: str, k: int, vocab: int) -> int:
    """Bytes one distilled target token holds in the teacher cache (decoder.loss.TokenTeacher):
    target id int64 + alpha, tau, u, d fp32 = 24, then top-k: k ids int32 + k log q fp32 +
    log q(rest) fp32 + aux 3 x fp32 = 8 min(k, V) + 16; full: V logits fp16 = 2 V."""
    common = 8 + 4 * 4
    if kind == "topk":
        return common + 8 * min(k, vocab) + 16
    if kind == "full":
        return common + 2 * vocab
    raise ValueError(f"cache kind {kind!r}: use topk or full")


def kd_cache_bytes_ratio(topk_records: list[dict], full_records: list[dict]) -> float | None:
    """sum of kd_cache_bytes top-k / full over the steps both runs recorded (None: none)."""
    def by_step(recs):
        return {r["step"]: r["kd_cache_bytes"] for r in recs
                if r.get("step") is not None and r.get("kd_cache_bytes") is not None}
    a, b = by_step(topk_records), by_step(full_records)
    steps = set(a) & set(b)
    if not steps:
        return None
    return B.ratio(sum(a[s] for s in steps), sum(b[s] for s in steps))


def lora_param_counts(model) -> tuple[int, int]:
    """(non-embedding parameters, the frozen ones among them) of a peft model."""
    return B.non_embedding_params(model), B.non_embedding_params(model, frozen_only=True)


# ----------------------------------------------------------------------------------------
# measurements

def decoder_config(model: str, dataset: str, steps: int, **kw) -> RunConfig:
    """The preset's config with the bench's steps, budget compute, no evaluation during
    training, no checkpoints, nothing saved; `kw` overrides any field."""
    from dynsdpb.presets import load_preset
    base = dict(model=model, dataset=dataset, steps=steps, budget="compute",
                eval_every=10 ** 6, checkpoint_every=0, save_model=False)
    base.update(kw)
    return load_preset(PRESET).base.replace(**base)


def hf_lora_model(task, cfg: RunConfig):
    """A plain peft LoRA model as a Trainer user would build it, with the task's LoRA settings
    and the initial adapter our arm of seed cfg.seed gets (SharedLoraBase.add_arm)."""
    import torch
    from peft import get_peft_model

    from dynsdpb.decoder.models import load_causal_lm
    base = load_causal_lm(task.model_name, task.trust_remote_code)
    state = torch.random.get_rng_state()
    torch.manual_seed(cfg.seed)
    try:
        return get_peft_model(base, task.opt.lora.peft_config())
    finally:
        torch.random.set_rng_state(state)


def hf_trainer_throughput(cfg: RunConfig, workdir: Path, task) -> dict:
    """transformers.Trainer on hf_lora_model over our vanilla arm's rows and order. Returns
    bench.hf_train_timed's dict plus the model, its parameter counts and vocabulary, and the
    mean non-padding tokens per sample of those rows."""
    from dynsdpb.decoder.data import collate
    model = hf_lora_model(task, cfg)
    rows = [task.train.rows[i] for i in B.vanilla_order(cfg, len(task.train))]
    pad = task.tokenizer.pad_token_id
    res = B.hf_train_timed(model, rows, lambda feats: collate(feats, pad), cfg, workdir,
                           label_names=["labels"])
    n, frozen = lora_param_counts(model)
    res.update(model=model, non_embedding_params=n, frozen_params=frozen,
               vocab_size=int(model.get_output_embeddings().weight.shape[0]),
               tokens_per_sample=statistics.mean(len(r["input_ids"]) for r in rows))
    return res


def kd_cache_full_records(cfg: RunConfig, workdir: Path, steps: int = 3) -> list[dict]:
    """The records of a short dynsdpb run with kd_cache full (budget compute, as the compare)."""
    from dynsdpb.experiment import create_experiment
    from dynsdpb.store import RunDir
    c = cfg.replace(budget="compute", kd_cache="full", steps=min(cfg.steps, steps))
    exp = create_experiment(workdir, c, ["dynsdpb"], [c.seed], exp_dir=workdir / "kd-full")
    B.run_finished(exp)
    return RunDir(exp / f"dynsdpb-s{c.seed}").metrics()


def run(model: str = "smollm2-135m", dataset: str = "arith-easy", steps: int = 30,
        log=None, rss: bool = True, **cfg_kw) -> dict:
    from dynsdpb.tasks import prepare
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    work = Path(tempfile.mkdtemp(prefix="dynsdpb-bench-decoder-"))
    cfg = decoder_config(model, dataset, steps, **cfg_kw)
    out: dict = {"mode": "decoder", "model": cfg.model, "dataset": cfg.dataset, "steps": steps,
                 "batch_size": cfg.batch_size, "max_len": cfg.max_len,
                 "finetune": cfg.finetune, "lora_r": cfg.lora_r, "kd_cache": cfg.kd_cache,
                 "top_k": cfg.top_k}

    with B.phase(out, "compare", log, "1/5 vanilla and dynsdpb in lockstep (budget compute)"):
        st = B.step_time_ratio(cfg, work, out)

    with B.phase(out, "hf_trainer", log, "2/5 our vanilla alone, then transformers.Trainer on "
                 "the same LoRA model, data and schedule"):
        alone = B.vanilla_alone_step_s(cfg, work)
        hf = hf_trainer_throughput(cfg, work, prepare(cfg))
        del hf["model"]
    ours = B.throughput_vs_hf(out, cfg.batch_size, alone, hf["samples_per_s"])

    with B.phase(out, "mfu", log, "3/5 fp32 matmul peak and MFU"):
        peak = B.matmul_flops()
    out.update(matmul_flops=peak, non_embedding_params=hf["non_embedding_params"],
               frozen_params=hf["frozen_params"], tokens_per_sample=hf["tokens_per_sample"],
               mfu_formula=MFU_FORMULA)
    out["mfu"] = B.mfu(hf["non_embedding_params"], ours * hf["tokens_per_sample"], peak,
                       frozen=hf["frozen_params"])

    with B.phase(out, "kd_cache", log, "4/5 teacher-cache bytes: a short kd_cache full run"):
        full = kd_cache_full_records(cfg, work)
    out["kd_cache_bytes_ratio"] = kd_cache_bytes_ratio(st["records"]["dynsdpb"], full)
    out["kd_cache_bytes_source"] = KD_CACHE_SOURCE
    out["kd_cache_bytes_ratio_expected"] = B.ratio(
        cache_bytes_per_token("topk", cfg.top_k, hf["vocab_size"]),
        cache_bytes_per_token("full", cfg.top_k, hf["vocab_size"]))

    if rss:
        with B.phase(out, "peak_rss", log, "5/5 peak memory, each run in its own process"):
            B.peak_rss(cfg, work, out, steps=RSS_STEPS)
    return B.with_goals(out, GOALS)
