"""The Setup form's helpers: field widgets and their values, prefilling the form from a
config or an experiment file, which fields apply to which model, built-in datasets by model
family, and a decoder file's column mapping.
"""
from __future__ import annotations

import streamlit as st

from dynsdpb import config as C
from dynsdpb.errors import ConfigError


# ---------------------------------------------------------------------------------------
# Handing a config to the Setup page (relaunch, YAML load)

FORM_PREFIX = "f_"
SPECIAL_FIELDS = ("model", "dataset", "text_column", "text_pair_column", "label_column",
                  "method", "seed", "name")


def field_widget_value(name: str, value):
    """What a field's widget holds for a config value (text for numbers, raw for the rest)."""
    f = C.FIELDS[name]
    if f.metadata.get("choices") or f.type in (bool, "bool"):
        return value
    return "" if value is None else str(value)


def prefill_setup(cfg: dict, methods: list[str] | None = None, seeds: list[int] | None = None,
                  name: str = "") -> list[str]:
    """Put a config (a dict as saved, or typed in a YAML) into the Setup page's widgets.

    Call it before the widgets are drawn (a callback, or another page). Values that cannot
    go into a widget (unknown fields, a choice that does not exist) are reported back; other
    invalid values are loaded as they are, so the form shows them with what to change.
    """
    ss = st.session_state
    notes: list[str] = []
    for k, v in cfg.items():
        if k not in C.FIELDS:
            notes.append(f"Ignored unknown field {k!r}.")
            continue
        if k in SPECIAL_FIELDS:
            continue
        f = C.FIELDS[k]
        choices = f.metadata.get("choices")
        if choices and v not in choices:
            notes.append(f"{k}: {v!r} is not one of {', '.join(choices)}; kept the default.")
            continue
        if f.type in (bool, "bool"):
            try:
                v = C.from_dict({k: v}, check=False).to_dict()[k]
            except ConfigError:
                notes.append(f"{k}: {v!r} is not true/false; kept the default.")
                continue
        ss[FORM_PREFIX + k] = field_widget_value(k, v)
    from dynsdpb.catalog import BUILTIN_MODELS
    if "model" in cfg:
        model = str(cfg.get("model") or "")
        if model in BUILTIN_MODELS:
            ss["w_model_choice"] = model
        else:
            ss["w_model_choice"] = OTHER_MODEL
            ss["w_model_other"] = model
    if "dataset" in cfg:
        ds = str(cfg.get("dataset") or "")
        if ds in builtin_datasets():
            ss["w_data_source"] = DATA_BUILTIN
            ss["w_data_builtin"] = ds
        else:
            ss["w_data_source"] = DATA_PATH
            ss["w_data_path"] = ds
    for k in ("text_column", "text_pair_column", "label_column"):
        if k in cfg:
            ss["w_" + k] = str(cfg[k] or "")
    if methods:
        ss["w_methods"] = [m for m in methods if m in C.METHODS]
    elif cfg.get("method") in C.METHODS:
        cur = [m for m in (ss.get("w_methods") or ["vanilla"]) if m in C.METHODS]
        if cfg["method"] not in cur:
            cur.append(cfg["method"])
        ss["w_methods"] = cur
    if seeds:
        ss["w_seeds"] = ",".join(str(s) for s in seeds)
    elif "seed" in cfg:
        ss["w_seeds"] = str(cfg["seed"])
    if name:
        ss["w_exp_name"] = name
    return notes



def load_experiment_yaml(d: dict, source: str) -> tuple[str, str]:
    """Put a loaded experiment file (parsed YAML) into the Setup form; (st kind, message).

    A whole experiment (dynsdpb/presets.py): every field plus `methods` and `seeds`. An older
    single-run file (`method: dlb`, `seed: 0`) adds its method to those picked (vanilla stays
    the baseline). Fields the file leaves out keep the form's values.
    """
    from dynsdpb.presets import experiment_from_dict
    try:
        exp = experiment_from_dict(d, source, check=False)
    except ConfigError as e:
        # Values the form can still show (a wrong type, an unknown field): load what fits, so
        # each field shows its problem and fix next to it, and say what was left out.
        rest = {k: v for k, v in d.items() if k not in ("methods", "seeds", "description")}
        notes = prefill_setup(rest) + [f"{p.field}: {p.fix}." for p in e.problems]
    else:
        base = {k: v for k, v in exp.base.to_dict().items() if k in d}
        notes = prefill_setup(base, methods=exp.methods if "methods" in d else None,
                              seeds=exp.seeds if "seeds" in d else None, name=exp.name)
    msg = f"Loaded {source}." + (" " + " ".join(notes) if notes else "")
    return ("warning" if notes else "success", msg)

OTHER_MODEL = "other: local folder or hub id"
DATA_BUILTIN = "built-in"
DATA_UPLOAD = "upload a file"
DATA_PATH = "local file path or hub id"


# ---------------------------------------------------------------------------------------
# Encoders and decoders on one Setup form. RunConfig fields in the group "decoder" (their
# metadata) are read by decoder models only; ENCODER_ONLY_FIELDS by encoders only (a decoder
# reads prompt/target columns, and min_confidence belongs to tweets-sentiment). FIELD_NEEDS:
# fields that matter only under another field's value. The form draws a field only where
# `field_applies` says so; everything else about a field comes from RunConfig.

ENCODER_ONLY_FIELDS = ("text_column", "text_pair_column", "label_column", "min_confidence",
                       "augment", "augment_p")
FIELD_NEEDS = {"lora_r": ("finetune", "lora"), "lora_alpha": ("finetune", "lora"),
               "lora_dropout": ("finetune", "lora"), "lora_target_modules": ("finetune", "lora"),
               "save_format": ("finetune", "lora"), "top_k": ("kd_cache", "topk"),
               "warmup_alpha_steps": ("schedule", "warmup")}
GENERATION = "generation"
CLASSIFICATION = "classification"


# Fields whose widget must not look like another's. warmup_ratio warms the learning rate up;
# warmup_alpha_steps belongs to the dlb arm's `warmup` alpha schedule. The config keys stay
# (old configs load); the form gives them labels and help that say which warm-up they are.
FIELD_LABELS = {"warmup_ratio": "lr warm-up share (warmup_ratio)",
                "warmup_alpha_steps": "alpha warm-up steps (warmup_alpha_steps)"}
FIELD_HELP_PREFIX = {
    "warmup_ratio": "Learning-rate warm-up of the optimiser, for every arm; not the dlb "
                    "arm's `warmup` alpha schedule. ",
    "warmup_alpha_steps": "For the dlb arm's `warmup` schedule: how long the distillation "
                          "weight alpha stays 0; not the learning-rate warm-up. "}
# The schedule list is the dlb arm's: `auto` means static there, and dynsdpb-v1 is the dynsdpb
# arm's own schedule (validate refuses it for dlb). Configs with `auto` still load (as static).
DLB_SCHEDULES = ("static", "warmup", "linear")
FIELD_CHOICES = {"schedule": DLB_SCHEDULES}
FIELD_DEFAULTS = {"schedule": "static"}


def field_label(name: str) -> str:
    return FIELD_LABELS.get(name, name)


def field_help(name: str) -> str:
    return FIELD_HELP_PREFIX.get(name, "") + C.FIELDS[name].metadata.get("help", "")


def dlb_schedule(value) -> str:
    """The dlb schedule a loaded value means on the form (auto and dynsdpb-v1: static; the
    dynsdpb arm ignores `schedule`, so this changes no run the form can start)."""
    return value if value in DLB_SCHEDULES else "static"


def formula_fields(method: str, schedule: str) -> list[str]:
    """The RunConfig fields the formula text (schedules.describe) of this arm shows."""
    import string

    from dynsdpb.engine.schedules import FORMULAS
    sched = "dynsdpb-v1" if method == "dynsdpb" else ("static" if schedule == "auto"
                                                       else schedule)
    names = [f for _, f, _, _ in string.Formatter().parse(FORMULAS.get(sched, "")) if f]
    extra = ["tau_direction"] if "tau_term" in names else []
    return ["schedule"] + [n for n in names if n in C.FIELDS] + extra


def formula_text(cfg, method: str, problems: dict) -> tuple[bool, str]:
    """(ok, text): the arm's formula with its values, or, when a value it shows is invalid,
    that field's problem (the formula would echo a bad or a default value)."""
    from dynsdpb.engine.schedules import describe
    for name in formula_fields(method, cfg.schedule):
        for p in problems.get(name, []):
            return False, (f"Formula shown once **{field_label(name)}** is fixed: "
                           f"`{p.value}`: {p.fix}")
    return True, describe(cfg.replace(method=method))


def field_family(name: str) -> str | None:
    """"decoder" or "encoder" for a field only that kind of model reads, None for both."""
    if C.FIELDS[name].metadata.get("group") == "decoder":
        return "decoder"
    return "encoder" if name in ENCODER_ONLY_FIELDS else None


def field_applies(name: str, decoder: bool, values: dict | None = None) -> bool:
    """Does the Setup form show this field for a decoder (or an encoder) model, given the
    other fields' `values` (e.g. the LoRA settings only with finetune=lora)?"""
    fam = field_family(name)
    if fam is not None and (fam == "decoder") != decoder:
        return False
    need = FIELD_NEEDS.get(name)
    return not (need and values is not None and values.get(need[0]) != need[1])


def builtin_datasets() -> dict[str, tuple[str, str]]:
    """Every built-in dataset the engine lists: name -> (kind, description); kind is
    "classification" (encoders) or "generation" (prompt -> target text, decoders)."""
    from dynsdpb.catalog import CLASSIFICATION_DATASETS, GENERATION_DATASETS
    out = {n: (CLASSIFICATION, d.description) for n, d in CLASSIFICATION_DATASETS.items()}
    out.update({n: (GENERATION, d.description) for n, d in GENERATION_DATASETS.items()})
    return out


def model_family(model: str) -> str | None:
    """"decoder", "encoder", or None when it cannot be told offline (a hub id)."""
    from dynsdpb.catalog import BUILTIN_MODELS
    if model in BUILTIN_MODELS:
        return BUILTIN_MODELS[model].kind
    return C.model_family(model.strip()) if model.strip() else None


def datasets_for(family: str | None) -> list[str]:
    """The built-in datasets a model of this family trains on (all when it is unknown)."""
    want = {"decoder": GENERATION, "encoder": CLASSIFICATION}.get(family or "")
    return [n for n, (kind, _) in builtin_datasets().items() if want in (None, kind)]


# An encoder's file: which column holds the text. Guessing by name alone picked `id` for an
# `id,review,sentiment` file; the text is the column with the longest free text.

def _is_number(v) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float)):
        return True
    try:
        float(str(v).strip())
    except ValueError:
        return False
    return bool(str(v).strip())


def numeric_column(rows: list[dict], col: str) -> object | None:
    """A sample value when every non-empty value of `col` is a number (an id, a score: not
    text to classify), else None."""
    vals = [r.get(col) for r in rows if r.get(col) is not None and str(r.get(col)).strip()]
    if vals and all(_is_number(v) for v in vals):
        return vals[0]
    return None


def guess_text_column(rows: list[dict], cols: list[str], exclude=()) -> str | None:
    """The non-numeric column with the longest mean string length (the label and pair
    columns excluded); None when every column is numeric or excluded."""
    best, best_len = None, -1.0
    for c in cols:
        if c in exclude or numeric_column(rows, c) is not None:
            continue
        lens = [len(str(r.get(c) or "")) for r in rows]
        mean = sum(lens) / max(len(lens), 1)
        if mean > best_len:
            best, best_len = c, mean
    return best


# A decoder's file: which columns hold the prompt, the target text and (optionally) the
# final answer for exact match. The engine reads columns named prompt/target/answer, so the
# app hands it the file with its columns renamed (mapped_jsonl).
LM_COLUMNS = ("prompt", "target", "answer")


def guess_lm_columns(cols: list[str]) -> dict[str, str]:
    lower = {c.lower(): c for c in cols}

    def pick(names, default):
        return next((lower[n] for n in names if n in lower), default)
    prompt = pick(("prompt", "question", "input", "instruction", "query", "text"), cols[0])
    target = pick(("target", "completion", "output", "response", "answer_cot", "solution",
                   "label"), cols[min(1, len(cols) - 1)])
    answer = pick(("answer", "final_answer", "final", "gold", "solution_number"), "")
    return {"prompt": prompt, "target": target, "answer": "" if answer == target else answer}


def map_lm_rows(rows: list[dict], mapping: dict[str, str]) -> list[dict]:
    """Rows with the columns the engine reads: prompt, target and (when mapped) answer."""
    out = []
    for r in rows:
        m = {"prompt": r.get(mapping["prompt"]), "target": r.get(mapping["target"])}
        if mapping.get("answer"):
            m["answer"] = r.get(mapping["answer"])
        out.append(m)
    return out


def mapped_jsonl(rows: list[dict], mapping: dict[str, str]) -> bytes:
    import json
    return b"".join((json.dumps(r, ensure_ascii=False, default=str) + "\n").encode("utf-8")
                    for r in map_lm_rows(rows, mapping))
