"""The keys of a metrics record: one source for the loop, the charts, the Compare page and docs.

Every line of a run's metrics.jsonl holds exactly `RECORD_KEYS` (None where a key does not
apply), so the file reads as one table (method.md §7). Each key has one meaning: a config
bound (`alpha_max`, `tau_min`, `tau_max` in RunConfig) is never also a per-step statistic,
so the per-step extremes over the carried samples are `alpha_lo`/`alpha_hi`/`tau_lo`/`tau_hi`.
Records written before that rename still read: `upgrade` maps the old keys.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Key:
    label: str          # short name for a chart title or a table column
    unit: str           # what the axis measures; "" for a plain count or a label
    help: str           # one sentence: what the number is
    percent: bool = False   # a share in [0, 1]: shown as % everywhere (stored as a fraction)
    higher_is_better: bool | None = None


KEYS: dict[str, Key] = {
    # -- bookkeeping
    "step": Key("step", "", "Optimizer steps completed."),
    "time": Key("time", "unix s", "When the record was written (the app measures its lag)."),
    "epoch": Key("epoch", "epochs", "Passes over the training set by new samples."),
    "method": Key("method", "", "vanilla, dlb or dynsdpb."),
    "schedule": Key("schedule", "", "The alpha/tau schedule the arm used."),
    "seed": Key("seed", "", "Seed of head init, data order and dropout."),
    # -- loss parts (method.md §2)
    "loss": Key("loss", "nats", "Total loss: ce + kd.", higher_is_better=False),
    "ce": Key("CE", "nats", "Cross-entropy (MSE for regression) over every sample of the step.",
              higher_is_better=False),
    "kd": Key("KD term", "nats", "Mean over carried samples (decoders: their distilled target "
              "tokens) of alpha_i * tau_i^2 * KL(previous || current) at tau_i."),
    # -- what the schedule set for the carried half (mean, lowest, highest)
    "alpha": Key("alpha", "weight", "Mean KD weight over the carried samples."),
    "alpha_lo": Key("alpha (lowest)", "weight", "Lowest alpha_i among this step's carried "
                    "samples."),
    "alpha_hi": Key("alpha (highest)", "weight", "Highest alpha_i among this step's carried "
                    "samples."),
    "tau": Key("tau", "temperature", "Mean temperature over the carried samples."),
    "tau_lo": Key("tau (lowest)", "temperature", "Lowest tau_i among this step's carried "
                  "samples."),
    "tau_hi": Key("tau (highest)", "temperature", "Highest tau_i among this step's carried "
                  "samples."),
    "u_mean": Key("uncertainty", "0-1", "Mean normalised entropy of the teacher predictions."),
    "d_mean": Key("margin", "-1..1", "Mean margin: teacher probability of the gold class minus "
                  "the largest other."),
    # -- drift: how far predictions move
    "logit_drift": Key("logit drift", "KL, nats", "Mean over carried samples of KL(previous-step "
                       "prediction || current) at tau = 1, before the update."),
    "agreement": Key("agreement", "%", "Share of carried samples whose predicted class did not "
                     "change since the previous step.", percent=True),
    # -- the teacher cache (decoders: per target token; method.md §5)
    "kd_cache_bytes": Key("teacher cache", "bytes", "Bytes of the teacher cache this step "
                          "distilled from (decoders: top-k ids, log-probs and rest mass, or "
                          "fp16 logits with kd_cache full)."),
    "aligned_tokens": Key("aligned tokens", "tokens", "Decoders: target tokens of the carried "
                          "sequences that were distilled (the common prefix of the cached and "
                          "current targets)."),
    "kd_topk_mass": Key("cached top-k mass", "%", "Decoders, kd_cache topk: the teacher's "
                        "probability mass (at its tau) that the top_k cached tokens hold, mean "
                        "over the carried target tokens. Low: KD sees a coarse teacher (lower "
                        "tau or use kd_cache full; docs/method.md section 5).", percent=True),
    "dropped_tokens": Key("dropped tokens", "tokens", "Decoders: carried target tokens left "
                          "without a teacher because the targets changed since the cache "
                          "(output-mismatch alignment); 0 in plain fine-tuning."),
    # -- optimisation
    "lr": Key("learning rate", "lr", "AdamW learning rate at this step."),
    "grad_norm": Key("gradient norm", "L2 norm", "Gradient norm before clipping."),
    "samples_seen": Key("samples seen", "forward passes", "Samples forwarded so far (a "
                        "distilling step forwards the carried half again)."),
    "samples_per_s": Key("throughput", "samples/s", "Samples forwarded per second in this "
                         "step."),
    "wall_time": Key("training time", "s", "Training time so far, evaluation excluded."),
    # -- evaluation (every eval_every steps and at the end)
    "val_accuracy": Key("validation accuracy", "%", "Share of validation samples classified "
                        "right.", percent=True, higher_is_better=True),
    "val_macro_f1": Key("validation macro-F1", "%", "F1 averaged over classes.", percent=True,
                        higher_is_better=True),
    "val_mcc": Key("validation MCC", "-1..1", "Matthews correlation.", higher_is_better=True),
    "val_pearson": Key("validation Pearson r", "-1..1", "Pearson correlation (regression).",
                       higher_is_better=True),
    "val_spearman": Key("validation Spearman rho", "-1..1", "Spearman rank correlation "
                        "(regression).", higher_is_better=True),
    "val_mse": Key("validation MSE", "squared units", "Mean squared error (regression).",
                   higher_is_better=False),
    "val_loss": Key("validation loss", "nats", "CE (MSE for regression) on the validation set; "
                    "decoders: mean CE per target token.", higher_is_better=False),
    "val_exact_match": Key("validation exact match", "%", "Decoders: share of "
                           "validation prompts whose greedy generation's last number equals "
                           "the gold answer, wherever it stands (a cut-off echo of the "
                           "question can count; see the strict score).", percent=True, higher_is_better=True),
    "val_strict_exact_match": Key("validation strict exact match", "%", "Decoders: share "
                                  "of validation prompts whose greedy generation ended by "
                                  "itself with the final answer in the expected place (the "
                                  "whole completion, or after '####' / 'answer is').",
                                  percent=True, higher_is_better=True),
    "val_truncated": Key("validation truncated", "%", "Decoders: share of validation "
                         "generations cut off at max_new_tokens (no end of sequence).",
                         percent=True),
    "val_perplexity": Key("validation perplexity", "exp(nats)", "Decoders: exp of the mean CE "
                          "per target token on the validation set.", higher_is_better=False),
    "probe_drift": Key("probe drift", "KL, nats", "KL between the predictions on a fixed probe "
                       "set now and at the previous evaluation; every arm has it."),
    # -- logit_drift split in two (at evaluations, distilling arms; method.md §7)
    "update_drift": Key("update drift", "KL, nats", "The update alone: KL(no-dropout output on "
                        "the carried half one step ago || no-dropout output now), in eval mode. "
                        "Grows as lr^2."),
    "dropout_drift": Key("dropout drift", "KL, nats", "Dropout alone: KL between two train-mode "
                         "passes over the carried half with the same weights and different "
                         "dropout masks (last step's and this step's). logit_drift is about "
                         "update + dropout."),
}

STEP_KEYS = ("step", "time", "epoch", "method", "schedule", "seed", "loss", "ce", "kd",
             "alpha", "alpha_lo", "alpha_hi", "tau", "tau_lo", "tau_hi", "u_mean", "d_mean",
             "logit_drift", "agreement", "kd_cache_bytes", "kd_topk_mass", "aligned_tokens",
             "dropped_tokens",
             "lr", "grad_norm", "samples_seen", "samples_per_s", "wall_time")
EVAL_KEYS = ("val_accuracy", "val_macro_f1", "val_mcc", "val_pearson", "val_spearman",
             "val_mse", "val_exact_match", "val_strict_exact_match", "val_truncated",
             "val_perplexity", "val_loss", "probe_drift",
             "update_drift", "dropout_drift")
RECORD_KEYS = STEP_KEYS + EVAL_KEYS

# Keys of records written before the rename (they reused config field names).
OLD_NAMES = {"alpha_min": "alpha_lo", "alpha_max": "alpha_hi", "tau_min": "tau_lo",
             "tau_max": "tau_hi", "drift": "logit_drift"}

# Numbers a chart can plot against a step (not labels or bookkeeping).
PLOTTABLE = tuple(k for k in RECORD_KEYS if k not in ("step", "time", "method", "schedule",
                                                        "seed"))


def upgrade(rec: dict) -> dict:
    """A record with today's key names (old files used config names for per-step extremes)."""
    if not any(k in rec for k in OLD_NAMES):
        return rec
    return {OLD_NAMES.get(k, k): v for k, v in rec.items()}


def axis_title(key: str) -> str:
    """'validation accuracy (%)': a label with its unit, for a chart's y-axis."""
    k = KEYS.get(key)
    if k is None:
        return key
    return f"{k.label} ({k.unit})" if k.unit else k.label


def display_value(key: str, v):
    """The number as the app shows it: shares in %, everything else as stored."""
    k = KEYS.get(key)
    if v is None or k is None or not k.percent:
        return v
    return 100.0 * v
