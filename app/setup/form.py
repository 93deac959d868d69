"""Setup's form: the widgets' first values, the values collected and checked with the
engine's own checks (before drawing, so each problem sits under its field), the field widgets
(Form), and the presets that fill the whole form.
"""
from __future__ import annotations

import hashlib

from pathlib import Path

import streamlit as st
import yaml

from app import forms
from app.setup import data as setup_data
from app.forms import DATA_BUILTIN, DATA_PATH, DATA_UPLOAD, FORM_PREFIX, OTHER_MODEL
from dynsdpb import config as C
from dynsdpb.encoder.data import dataset_kind
from dynsdpb.tables import FILE_SUFFIXES
from dynsdpb.errors import ConfigError, Problem
from dynsdpb.catalog import BUILTIN_MODELS
from dynsdpb.encoder.models import model_kind
from dynsdpb.presets import list_presets, load_preset

ss = st.session_state
DEFAULTS = C.RunConfig()


# ---------------------------------------------------------------------------------------
# Widget state: defaults once, then whatever the user (or a loaded YAML / relaunch) set.

def init_state() -> None:
    for name in C.FIELDS:
        if name not in forms.SPECIAL_FIELDS:
            ss.setdefault(FORM_PREFIX + name,
                          forms.field_widget_value(name, getattr(DEFAULTS, name)))
    # The schedule list is the dlb arm's (static, warmup, linear): a loaded `auto` means static.
    sched = ss.get(FORM_PREFIX + "schedule")
    ss[FORM_PREFIX + "schedule"] = forms.dlb_schedule(sched)
    if sched not in (None, "auto", *forms.DLB_SCHEDULES):
        # e.g. dynsdpb-v1 from an old config: the dynsdpb arm's own schedule, refused for dlb
        ss["schedule_note"] = (f"schedule `{sched}` is not a dlb schedule (the dynsdpb arm "
                               "always uses dynsdpb-v1); the dlb arm's schedule was set to "
                               "static.")
    ss.setdefault("w_model_choice", DEFAULTS.model)
    ss.setdefault("w_model_other", "")
    ss.setdefault("w_data_source", DATA_BUILTIN)
    ss.setdefault("w_data_builtin", DEFAULTS.dataset)
    ss.setdefault("w_data_path", "")
    ss.setdefault("w_text_column", DEFAULTS.text_column)
    ss.setdefault("w_text_pair_column", DEFAULTS.text_pair_column)
    ss.setdefault("w_label_column", DEFAULTS.label_column)
    for k in forms.LM_COLUMNS:   # a decoder's file: prompt/target/answer columns
        ss.setdefault(f"w_lm_{k}", "")
    ss.setdefault("w_methods", ["vanilla", "dynsdpb"])
    ss.setdefault("w_seeds", "0")
    ss.setdefault("w_exp_name", "")


def on_yaml() -> None:
    f = ss.get("yaml_widget")
    if f is None:
        return
    try:
        d = yaml.safe_load(f.getvalue().decode("utf-8", errors="replace"))
    except yaml.YAMLError as e:
        ss["yaml_msg"] = ("error", f"{f.name} is not valid YAML ({str(e).splitlines()[0]})")
        return
    if not isinstance(d, dict):
        ss["yaml_msg"] = ("error", f"{f.name} must hold a mapping of field names to values")
        return
    ss["yaml_msg"] = forms.load_experiment_yaml(d, f.name)


# ---------------------------------------------------------------------------------------
# Collect the values and check them (before drawing, so problems sit under their fields)

def is_decoder(raw: dict) -> bool:
    """Does the form describe a decoder (causal LM) run? The engine decides from the model,
    the dataset and the task (config.is_causal_lm), without loading anything."""
    try:
        return C.is_causal_lm(C.from_dict({k: raw[k] for k in ("model", "dataset", "task")},
                                          check=False))
    except ConfigError:
        return False


def upload_id(up: dict | None) -> str | None:
    if not up:
        return None
    return up.get("sha1") or hashlib.sha1(up.get("data") or b"").hexdigest()


def _size(k: str) -> int:
    try:
        return max(int(str(ss.get(FORM_PREFIX + k, "0")).strip() or 0), 0)
    except ValueError:
        return 0


def auto_sizes_for_new_upload() -> None:
    """A newly uploaded file whose rows the typed split sizes do not leave room for gets auto
    sizes: sizes typed for an earlier dataset (400 validation, 800 test) blocked Start on a
    210-row upload. Sizes that fit the file are kept. Said once, above the file."""
    up = ss.get("upload")
    if ss.get("w_data_source") != DATA_UPLOAD or not up or \
            ss.get("upload_sized") == upload_id(up):
        return
    ss["upload_sized"] = upload_id(up)
    try:
        rows, _ = setup_data.file_rows(*setup_data.file_source())
    except Exception:  # noqa: BLE001 - an unreadable file gets its own error further down
        return
    if _size("val_size") + _size("test_size") < len(rows):
        return
    changed = [k for k in ("val_size", "test_size") if _size(k)]
    for k in changed:
        ss[FORM_PREFIX + k] = "0"
    if changed:
        ss["upload_note"] = (f"New file: {' and '.join(changed)} set to 0 (auto, see the "
                             f"field's help): the sizes typed before left none of its "
                             f"{len(rows)} rows for training.")


def family_temperatures(raw: dict, decoder: bool) -> None:
    """The tau fields follow the model family while they hold the other family's defaults
    (config.DECODER_TEMPERATURES: a decoder's top-k cache cannot carry tau 3); a value the
    user typed stays. Called before the widgets are drawn."""
    want, other = C.default_temperatures(decoder), C.default_temperatures(not decoder)
    try:
        cur = {k: float(raw[k]) for k in want}
    except (TypeError, ValueError):
        return
    if cur == other and want != other:
        for k, v in want.items():
            ss[FORM_PREFIX + k] = raw[k] = forms.field_widget_value(k, v)


def collect() -> tuple[C.RunConfig, dict[str, list[Problem]], list[str], list[int], list[str],
                       bool]:
    problems: dict[str, list[Problem]] = {}

    def add(p: Problem) -> None:
        lst = problems.setdefault(p.field, [])
        if all(q.fix != p.fix for q in lst):
            lst.append(p)

    auto_sizes_for_new_upload()
    raw = {n: ss[FORM_PREFIX + n] for n in C.FIELDS if n not in forms.SPECIAL_FIELDS}
    choice = ss["w_model_choice"]
    raw["model"] = ss["w_model_other"] if choice == OTHER_MODEL else choice
    src = ss["w_data_source"]
    if src == DATA_BUILTIN:
        raw["dataset"] = ss["w_data_builtin"]
        raw.update(text_column="text", text_pair_column="", label_column="label")
    else:
        if src == DATA_UPLOAD:
            raw["dataset"] = ss["upload"]["name"] if ss.get("upload") else ""
        else:
            raw["dataset"] = ss["w_data_path"]
        raw["text_column"] = ss["w_text_column"]
        raw["text_pair_column"] = ss["w_text_pair_column"]
        raw["label_column"] = ss["w_label_column"]
    decoder = is_decoder(raw)
    family_temperatures(raw, decoder)
    if decoder:
        # a decoder reads prompt/target columns (mapped below), never these
        raw.update(text_column=DEFAULTS.text_column, text_pair_column="",
                   label_column=DEFAULTS.label_column)
    warnings: list[str] = []

    methods = [m for m in ss["w_methods"] if m in C.METHODS]
    if not methods:
        add(Problem("methods", "", "pick at least one method (vanilla is the baseline)"))
    try:
        seeds = C.parse_int_list("seeds", ss["w_seeds"])
    except ConfigError as e:
        seeds = [0]
        for p in e.problems:
            add(p)
    raw["method"] = methods[0] if methods else "vanilla"
    raw["seed"] = seeds[0]

    good = {}
    for k, v in raw.items():
        try:
            C.from_dict({k: v}, check=False)
            good[k] = v
        except ConfigError as e:
            for p in e.problems:
                add(p)
    cfg = C.from_dict(good, check=False)
    for m in methods or ["vanilla"]:
        for p in C.validate(cfg.replace(method=m)):
            add(p)
    if choice == OTHER_MODEL and str(raw["model"]).strip() \
            and model_kind(str(raw["model"]).strip()) == "missing":
        add(Problem("model", raw["model"], "no such folder; give a folder with config.json and "
                    f"safetensors weights, a hub id, or a built-in ({', '.join(BUILTIN_MODELS)})"))
    if src == DATA_UPLOAD and not ss.get("upload"):
        # nothing uploaded yet: one line saying what to do (the empty dataset field's own
        # "give a built-in dataset name..." does not apply to an upload)
        problems["dataset"] = []
        add(Problem("dataset", "", "upload a CSV, TSV, JSONL, JSON or Parquet file"))
    elif src == DATA_PATH and raw["dataset"].strip():
        kind = dataset_kind(raw["dataset"].strip())
        if kind == "file" and not Path(raw["dataset"].strip()).expanduser().is_file():
            add(Problem("dataset", raw["dataset"], "no such file; check the path (or upload it)"))
        elif kind == "unknown":
            add(Problem("dataset", raw["dataset"], "not a file path with a known suffix "
                        f"({', '.join(FILE_SUFFIXES)}) or a hub id such as nyu-mll/glue:rte"))
    fs = setup_data.file_source()
    if fs and not problems.get("dataset"):
        try:
            _, warnings = setup_data.file_rows(*fs)
            if decoder:
                m = setup_data.lm_mapping()
                if m["prompt"] and m["prompt"] == m["target"]:
                    add(Problem("target", m["target"], "the target column must differ from the "
                                "prompt column: pick the column with the text to generate"))
                elif m["answer"] and m["answer"] == m["prompt"]:
                    add(Problem("answer", m["answer"], "the answer column must differ from the "
                                "prompt column; pick the final-answer column or (none)"))
                else:
                    for p in setup_data.check_lm_rows(*fs, m["prompt"], m["target"],
                                                      m["answer"], yaml.safe_dump(cfg.to_dict())):
                        add(p)
            else:
                for p in setup_data.check_rows(*fs, yaml.safe_dump(cfg.to_dict()))[0]:
                    add(p)
        except ConfigError as e:
            for p in e.problems:
                add(p)
    return cfg, problems, methods, seeds, warnings, decoder


# ---------------------------------------------------------------------------------------
# Drawing the fields

def problem_text(p: Problem) -> str:
    """'**lr** = `abc`: use a number > 0'; an empty value says so in words (not `` ``)."""
    v = "" if p.value is None else str(p.value)
    if not v.strip():
        return f"**{p.field}** is empty: {p.fix}"
    tick = "``" if "`" in v else "`"
    return f"**{p.field}** = {tick}{v}{tick}: {p.fix}"


class Form:
    """The field widgets of one rerun: each with its help text and its problems under it.
    `shown` names the fields whose problems are drawn; the rest are listed above Start."""

    def __init__(self, problems: dict[str, list[Problem]], decoder: bool, values: dict):
        self.problems, self.decoder, self.values = problems, decoder, values
        self.shown: set[str] = set()

    def show_problems(self, name: str, where=st) -> None:
        for p in self.problems.get(name, []):
            where.error(problem_text(p), icon=":material/warning:")
        self.shown.add(name)

    def field(self, name: str, where=st) -> None:
        """One RunConfig field as a widget, with its help text and its problems under it."""
        f = C.FIELDS[name]
        key = FORM_PREFIX + name
        label, help_ = forms.field_label(name), forms.field_help(name)
        choices = forms.FIELD_CHOICES.get(name) or f.metadata.get("choices")
        if choices:
            if ss.get(key) not in choices:
                ss[key] = forms.FIELD_DEFAULTS.get(name, getattr(DEFAULTS, name))
            where.selectbox(label, list(choices), key=key, persist_state="session", help=help_)
        elif f.type in (bool, "bool"):
            where.checkbox(label, key=key, persist_state="session", help=help_)
        else:
            where.text_input(label, key=key, persist_state="session", help=help_)
        self.show_problems(name, where)

    def grid(self, names: list[str], ncols: int = 3) -> None:
        """Fields in columns: only those this kind of model reads (forms.field_applies)."""
        names = [n for n in names if forms.field_applies(n, self.decoder, self.values)]
        cols = st.columns(ncols)
        for i, n in enumerate(names):
            with cols[i % ncols]:
                self.field(n)

    def unshown(self) -> list[Problem]:
        """Problems of fields not drawn (hidden for this model, or never on the form)."""
        return [p for n, ps in self.problems.items() if n not in self.shown for p in ps]


# ---------------------------------------------------------------------------------------
# Presets: whole experiments shipped as YAML in assets/presets/ (dynsdpb/presets.py). The
# quick demo makes MiniLM on tweets finish in a few minutes on a laptop CPU (measured: 111 s
# for vanilla + dynsdpb, 2-core CPU), for a class to watch.

def presets() -> dict:
    return {n: load_preset(n) for n in list_presets()}


def _preset_summary(exp) -> str:
    """The preset's values that differ from the defaults, plus its methods and seeds."""
    d = exp.base.to_dict()
    changed = [f"{k}={v}" for k, v in d.items()
               if k not in ("method", "seed", "name") and v != getattr(DEFAULTS, k)]
    return ", ".join(changed + [f"methods={','.join(exp.methods)}",
                                f"seeds={','.join(map(str, exp.seeds))}"])


def draw_presets(decoder: bool) -> None:
    """At the top: a preset sets every field below, so it is the first choice, not the last."""
    shipped = presets()

    def _load_preset(name: str, label: str) -> None:
        exp = shipped[name]
        notes = forms.prefill_setup(exp.base.to_dict(), methods=exp.methods, seeds=exp.seeds)
        ss["preset_msg"] = (f"{label} loaded: {_preset_summary(exp)}. Change any of them below."
                            + "".join(" " + n for n in notes))

    c1, c2, c3 = st.columns([3, 1, 1.4], vertical_alignment="bottom")
    # Nothing picked until the user picks: the form holds the defaults, and a picker showing
    # "quick-demo" on the first load said otherwise.
    c1.selectbox("preset", list(shipped), key="w_preset", index=None,
                 placeholder="none: the form holds the defaults; pick one to load",
                 format_func=lambda n: f"{n}: {shipped[n].description}",
                 help="A whole experiment (model, data, methods, seeds, every field) from "
                 "assets/presets/; `dynsdpb compare --preset NAME` runs the same.")
    c2.button("Load preset", key="btn_load_preset", width="stretch",
              disabled=not ss.get("w_preset"),
              on_click=lambda: _load_preset(ss["w_preset"], f"Preset {ss['w_preset']}"))
    # The quick demo follows the model kind: with a decoder picked, the decoder demo (when the
    # engine ships one) instead of MiniLM on tweets.
    quick = "decoder-quick-demo" if decoder and "decoder-quick-demo" in shipped else "quick-demo"
    c3.button("Quick demo settings", key="btn_quick_demo", on_click=_load_preset,
              args=(quick, "Quick demo settings"), icon=":material/bolt:", width="stretch",
              help="Fewer steps, shorter inputs and smaller splits, so a pretrained model finishes "
              "in a few minutes on a CPU: " + _preset_summary(shipped[quick]))
    if ss.get("preset_msg"):
        st.caption(ss.pop("preset_msg"))
