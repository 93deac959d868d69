"""Validation: every field of a RunConfig checked in one place, all problems at once."""

from __future__ import annotations

import math

from dynsdpb.catalog import (
    BUILTIN_MAX_LEN,
    CLASSIFICATION_DATASETS,
    DECODERS,
    GENERATION_DATASETS,
)
from dynsdpb.config.fields import (
    FIELDS,
    LORA_TARGETS,
    METHODS,
    RunConfig,
    is_causal_lm,
    model_family,
)
from dynsdpb.errors import ConfigError, Problem


def validate(cfg: RunConfig) -> list[Problem]:
    P: list[Problem] = []

    def bad(name, fix):
        P.append(Problem(name, getattr(cfg, name), fix))

    for name, f in FIELDS.items():
        ch = f.metadata.get("choices")
        if ch and getattr(cfg, name) not in ch:
            bad(name, f"unknown value; use one of {', '.join(ch)}")
    if cfg.method == "dlb" and cfg.schedule == "dynsdpb-v1":
        bad("schedule", "dynsdpb-v1 is the dynsdpb method's schedule; use method=dynsdpb, or a "
            "dlb schedule: auto, static, warmup or linear")
    if not cfg.model.strip():
        bad("model", "give a built-in model name, a local folder or a hub id")
    if not cfg.dataset.strip():
        bad("dataset", "give a built-in dataset name, a local file or a hub id")
    if not cfg.text_column:
        bad("text_column", "name the column that holds the text")
    if not cfg.label_column:
        bad("label_column", "name the column that holds the label")
    elif cfg.label_column in (cfg.text_column, cfg.text_pair_column):
        bad("label_column", "the label must be a column of its own, not the text column")
    if cfg.text_pair_column and cfg.text_pair_column == cfg.text_column:
        bad("text_pair_column", "the second sentence must be another column than text_column "
            "(leave it empty for single-sentence tasks)")
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        bad("lr", "the learning rate must be a number > 0, e.g. 5e-5")
    elif cfg.lr > 1:
        bad("lr", "a learning rate above 1 diverges; try 5e-5")
    if cfg.steps < 1:
        bad("steps", "train for at least 1 step")
    if cfg.batch_size < 1:
        bad("batch_size", "use at least 1 (2 or more, even, for dlb/dynsdpb)")
    elif cfg.method in METHODS and cfg.distills and (cfg.batch_size < 2 or cfg.batch_size % 2):
        bad("batch_size", f"{cfg.method} needs an even batch size >= 2 (half is carried from the "
            f"previous step); try {max(2, cfg.batch_size + cfg.batch_size % 2)}")
    if cfg.max_len < 8:
        bad("max_len", "use at least 8 tokens")
    elif cfg.max_len > BUILTIN_MAX_LEN.get(cfg.model, cfg.max_len):
        bad("max_len", f"{cfg.model} handles at most {BUILTIN_MAX_LEN[cfg.model]} tokens; "
            "lower max_len")
    if not (cfg.weight_decay >= 0):
        bad("weight_decay", "use a number >= 0")
    if not (0 <= cfg.warmup_ratio < 1):
        bad("warmup_ratio", "use a share in [0, 1), e.g. 0.1")
    if not (cfg.grad_clip >= 0):
        bad("grad_clip", "use a number >= 0 (0 turns clipping off)")
    for name in ("alpha", "alpha_max"):
        v = getattr(cfg, name)
        if not (math.isfinite(v) and v >= 0):
            bad(name, "use a number >= 0")
    for name in ("tau", "tau_0", "tau_min", "tau_max"):
        v = getattr(cfg, name)
        if not (math.isfinite(v) and v > 0):
            bad(name, "temperatures must be > 0")
    if cfg.tau_min > 0 and cfg.tau_max > 0 and cfg.tau_min > cfg.tau_max:
        bad("tau_min", f"tau_min must be <= tau_max ({cfg.tau_max})")
    if cfg.warmup_alpha_steps < 0:
        bad("warmup_alpha_steps", "use 0 or more steps")
    if cfg.top_k < 1:
        bad("top_k", "keep at least 1 teacher token")
    _validate_decoder(cfg, bad)
    if cfg.max_train_samples < 0:
        bad("max_train_samples", "use 0 (all) or a positive count")
    if cfg.val_size < 0:
        bad("val_size", "use 0 (auto: 10% of the rows) or hold out at least 1 validation "
            "example (e.g. 200)")
    if cfg.test_size < 0:
        bad("test_size", "use 0 (auto: 10% of the rows) or hold out at least 1 test example "
            "(e.g. 400)")
    if not (0 <= cfg.label_noise < 1):
        bad("label_noise", "use a share in [0, 1), e.g. 0.2 for 20% flipped training labels")
    elif cfg.label_noise and cfg.task in ("regression", "causal-lm"):
        bad("label_noise", f"flips class labels; task {cfg.task} has none: set 0")
    if not (math.isfinite(cfg.augment_p) and 0 <= cfg.augment_p < 1):
        bad("augment_p", "use a share in [0, 1), e.g. 0.1")
    elif cfg.augment != "none" and cfg.augment_p == 0:
        bad("augment_p", f"augment {cfg.augment} with p = 0 draws no views: use e.g. 0.1, or set "
            "augment none")
    if cfg.augment != "none" and is_causal_lm(cfg):
        bad("augment", "views are for encoders: a decoder's target tokens must stay intact and "
            "its prompt views are not implemented; set augment none")
    if not (0 <= cfg.min_confidence <= 1):
        bad("min_confidence", "use a value in [0, 1]")
    if cfg.eval_every < 1:
        bad("eval_every", "evaluate at least every N >= 1 steps")
    if cfg.probe_size < 1:
        bad("probe_size", "use at least 1 probe sample")
    if cfg.checkpoint_every < 0:
        bad("checkpoint_every", "use 0 (only at the end) or a positive step count")
    for name in ("seed", "split_seed"):
        if not (0 <= getattr(cfg, name) < 2 ** 32):
            bad(name, "use a whole number >= 0 and below 2**32, e.g. 0")
    return P


def _validate_decoder(cfg: RunConfig, bad) -> None:
    """Model and dataset of one kind; the decoder fields (checked whatever the model, so a bad
    value is caught before anyone switches to a decoder)."""
    fam = model_family(cfg.model)
    lm = is_causal_lm(cfg)
    gens = ", ".join(GENERATION_DATASETS)
    if fam == "decoder" and cfg.task in ("classification", "regression"):
        bad("task", f"{cfg.model} is a decoder (causal LM); use task auto or causal-lm, or an "
            "encoder model for classification/regression")
    elif lm and fam == "encoder":
        bad("model" if cfg.task == "auto" else "task",
            f"{cfg.model} is an encoder (classification head); "
            + (f"{cfg.dataset} is a generation dataset (prompt -> target text) and needs a "
               f"decoder model such as {next(iter(DECODERS))}, or pick a classification dataset "
               "such as tweets-sentiment" if cfg.task == "auto" else
               "task causal-lm needs a decoder model such as "
               f"{next(iter(DECODERS))}; or set task to auto"))
    elif lm and cfg.dataset in CLASSIFICATION_DATASETS:
        bad("dataset", f"{cfg.dataset} is a classification dataset, but {cfg.model} is a decoder "
            f"(causal LM) that trains on prompt -> target text: use {gens} or a .jsonl/.csv "
            "with prompt and target columns; or pick an encoder model such as minilm-l6")
    elif not lm and cfg.dataset in GENERATION_DATASETS:
        bad("dataset", f"{cfg.dataset} is a generation dataset (prompt -> target text) and needs "
            f"a decoder model such as {next(iter(DECODERS))}"
            + (f"; {cfg.model} is an encoder" if fam == "encoder" else
               "; or set task to causal-lm if the model is a decoder"))
    if cfg.granularity == "token" and not lm:
        bad("granularity", "token is for decoder models (one alpha/tau per target token); "
            "encoders use sample or batch")
    if cfg.lora_r < 1:
        bad("lora_r", "the LoRA rank must be at least 1 (8 is usual)")
    if not (math.isfinite(cfg.lora_alpha) and cfg.lora_alpha > 0):
        bad("lora_alpha", "must be a number > 0 (usually 2 x lora_r, e.g. 16)")
    if not (0 <= cfg.lora_dropout < 1):
        bad("lora_dropout", "use a value in [0, 1), e.g. 0.05")
    mods = [m.strip() for m in cfg.lora_target_modules.split(",")]
    if not any(mods):
        bad("lora_target_modules", f"name at least one Linear module, e.g. {LORA_TARGETS}")
    elif not all(m.isidentifier() for m in mods):
        bad("lora_target_modules", "give module names separated by commas, e.g. q_proj,v_proj "
            "(letters, digits and _ only)")
    if cfg.max_new_tokens < 1:
        bad("max_new_tokens", "generate at least 1 token (16 fits short answers, 256 "
            "rationales)")
    if cfg.eval_generations < 0:
        bad("eval_generations", "use 0 (store none) or a positive count, e.g. 4")


def check_config(cfg: RunConfig) -> RunConfig:
    problems = validate(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg
