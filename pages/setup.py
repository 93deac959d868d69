"""Setup: pick a model, a dataset and the methods to compare; set the hyperparameters; Start.

The form is generated from the engine's RunConfig fields (labels, help texts, choices). Every
value is checked with the engine's own `validate`, for every chosen method, on every rerun:
problems show under their field with what to change, and Start stays off until none are left.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import streamlit as st
import yaml

from app import common, forms
from app.forms import DATA_BUILTIN, DATA_PATH, DATA_UPLOAD, FORM_PREFIX, OTHER_MODEL
from dynsdpb import config as C
from dynsdpb.data import FILE_SUFFIXES, dataset_kind, read_table, rows_to_taskdata
from dynsdpb.errors import ConfigError, Problem
from dynsdpb.models import BUILTIN_MODELS, model_kind
from dynsdpb.paths import ASSETS
from dynsdpb.presets import dump_experiment, list_presets, load_preset

ss = st.session_state
DEFAULTS = C.RunConfig()

# ---------------------------------------------------------------------------------------
# Widget state: defaults once, then whatever the user (or a loaded YAML / relaunch) set.

for _name in C.FIELDS:
    if _name not in forms.SPECIAL_FIELDS:
        ss.setdefault(FORM_PREFIX + _name,
                      forms.field_widget_value(_name, getattr(DEFAULTS, _name)))
# The schedule list is the dlb arm's (static, warmup, linear): a loaded `auto` means static.
_sched = ss.get(FORM_PREFIX + "schedule")
ss[FORM_PREFIX + "schedule"] = forms.dlb_schedule(_sched)
if _sched not in (None, "auto", *forms.DLB_SCHEDULES):
    # e.g. dynsdpb-v1 from an old config: the dynsdpb arm's own schedule, refused for dlb
    ss["schedule_note"] = (f"schedule `{_sched}` is not a dlb schedule (the dynsdpb arm always "
                           "uses dynsdpb-v1); the dlb arm's schedule was set to static.")
ss.setdefault("w_model_choice", DEFAULTS.model)
ss.setdefault("w_model_other", "")
ss.setdefault("w_data_source", DATA_BUILTIN)
ss.setdefault("w_data_builtin", DEFAULTS.dataset)
ss.setdefault("w_data_path", "")
ss.setdefault("w_text_column", DEFAULTS.text_column)
ss.setdefault("w_text_pair_column", DEFAULTS.text_pair_column)
ss.setdefault("w_label_column", DEFAULTS.label_column)
for _k in forms.LM_COLUMNS:   # a decoder's file: prompt/target/answer columns
    ss.setdefault(f"w_lm_{_k}", "")
ss.setdefault("w_methods", ["vanilla", "dynsdpb"])
ss.setdefault("w_seeds", "0")
ss.setdefault("w_exp_name", "")


def _on_upload() -> None:
    f = ss.get("upload_widget")
    if f is not None:
        data = f.getvalue()
        ss["upload"] = {"name": f.name, "data": data, "sha1": hashlib.sha1(data).hexdigest()}
        ss.pop("w_text_column", None)   # re-guess the mapping for the new file
        ss.pop("w_label_column", None)
        ss.pop("w_text_pair_column", None)
        for k in forms.LM_COLUMNS:
            ss.pop(f"w_lm_{k}", None)


def _on_yaml() -> None:
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


@st.cache_data(show_spinner=False, max_entries=8)
def _rows(key: str, name: str, _data: bytes | None) -> tuple[list[dict], list[str]]:
    """Rows of the chosen file; `key` names its content (arguments with _ are not hashed)."""
    return read_table(name, _data)


@st.cache_data(show_spinner=False, max_entries=32)
def _check_lm_rows(key: str, name: str, _data: bytes | None, prompt: str, target: str,
                   answer: str, cfg_yaml: str) -> list[Problem]:
    """The engine's checks of a decoder's file (prompt/target present, split sizes), on the
    rows with the mapped columns renamed as the engine reads them."""
    from dynsdpb.lm_data import splits_from_records
    from dynsdpb.lm_task import AUTO_TEST, AUTO_VAL
    rows, _ = _rows(key, name, _data)
    cfg = C.from_dict(yaml.safe_load(cfg_yaml), check=False)
    mapped = forms.map_lm_rows(rows, {"prompt": prompt, "target": target, "answer": answer})
    try:
        splits_from_records(mapped, name, cfg.split_seed, cfg.max_train_samples,
                            cfg.val_size or AUTO_VAL, cfg.test_size or AUTO_TEST)
    except ConfigError as e:
        return e.problems
    return []


@st.cache_data(show_spinner=False, max_entries=32)
def _check_rows(key: str, name: str, _data: bytes | None, cfg_yaml: str
                ) -> tuple[list[Problem], str, list[tuple[str, int]]]:
    """The engine's data checks (columns, labels, split sizes) on the chosen file, and what
    it read: (problems, task, [(class, rows)] over all splits; [] for regression)."""
    rows, _ = _rows(key, name, _data)
    cfg = C.from_dict(yaml.safe_load(cfg_yaml), check=False)
    try:
        td = rows_to_taskdata(rows, cfg, name)
    except ConfigError as e:
        return e.problems, "", []
    if td.task != "classification":
        return [], td.task, []
    import numpy as np
    counts = np.bincount(np.concatenate([td.train.labels, td.val.labels, td.test.labels]),
                         minlength=len(td.label_names))
    return [], td.task, [(n, int(c)) for n, c in zip(td.label_names, counts)]


def _file_source() -> tuple[str, str, bytes | None] | None:
    """(content key, name, bytes or None) of an uploaded file or of a local file that exists."""
    src = ss["w_data_source"]
    if src == DATA_UPLOAD and ss.get("upload"):
        up = ss["upload"]
        sha = up.get("sha1") or hashlib.sha1(up["data"]).hexdigest()
        return f"upload:{sha}", up["name"], up["data"]
    if src == DATA_PATH:
        p = Path(str(ss["w_data_path"]).strip()).expanduser()
        if p.suffix.lower() in FILE_SUFFIXES and p.is_file():
            stt = p.stat()
            return f"path:{p.resolve()}:{stt.st_mtime_ns}:{stt.st_size}", str(p), None
    return None


def _guess_mapping() -> None:
    """For a readable file, make the column widgets hold existing columns (guessing names)."""
    if ss["w_data_source"] == DATA_BUILTIN:
        return
    fs = _file_source()
    if not fs:
        return
    try:
        rows, _ = _rows(*fs)
    except ConfigError:
        return
    if not rows:
        return
    cols = [str(c) for c in rows[0].keys()]
    lm_guess = forms.guess_lm_columns(cols)
    new_file = ss.get("w_lm_guessed_for") != fs[0]   # a new file: guess all three again
    ss["w_lm_guessed_for"] = fs[0]
    for k in forms.LM_COLUMNS:
        options = cols + ([""] if k == "answer" else [])
        if new_file or ss.get(f"w_lm_{k}") not in options:
            ss[f"w_lm_{k}"] = lm_guess[k]
    lower = {c.lower(): c for c in cols}
    label = next((lower[c] for c in ("label", "labels", "target", "class", "sentiment", "y",
                                     "score") if c in lower), cols[-1])
    pair = next((lower[c] for c in ("text_pair", "sentence2", "hypothesis") if c in lower), "")
    # The text: a pair's first half by its name (sentence1, premise), otherwise the column
    # with the longest free text (not a numeric id).
    named = next((lower[c] for c in ("sentence1", "premise", "question") if c in lower), None)
    text = (named if pair and named else None) \
        or forms.guess_text_column(rows, cols, exclude={label, pair}) \
        or next((lower[c] for c in ("text", "sentence", "content") if c in lower), cols[0])
    guesses = {"w_text_column": text, "w_label_column": label, "w_text_pair_column": pair}
    for k, options in (("w_text_column", cols), ("w_label_column", cols),
                       ("w_text_pair_column", [""] + cols)):
        if ss.get(k) not in options:
            ss[k] = guesses[k]


# ---------------------------------------------------------------------------------------
# Collect the values and check them (before drawing, so problems sit under their fields)

def _is_decoder(raw: dict) -> bool:
    """Does the form describe a decoder (causal LM) run? The engine decides from the model,
    the dataset and the task (config.is_causal_lm), without loading anything."""
    try:
        return C.is_causal_lm(C.from_dict({k: raw[k] for k in ("model", "dataset", "task")},
                                          check=False))
    except ConfigError:
        return False


def lm_mapping() -> dict[str, str]:
    return {k: str(ss.get(f"w_lm_{k}") or "") for k in forms.LM_COLUMNS}


def collect() -> tuple[C.RunConfig, dict[str, list[Problem]], list[str], list[int], list[str],
                       bool]:
    problems: dict[str, list[Problem]] = {}

    def add(p: Problem) -> None:
        lst = problems.setdefault(p.field, [])
        if all(q.fix != p.fix for q in lst):
            lst.append(p)

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
    decoder = _is_decoder(raw)
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
        add(Problem("dataset", "", "upload a CSV, TSV, JSONL, JSON or Parquet file"))
    elif src == DATA_PATH and raw["dataset"].strip():
        kind = dataset_kind(raw["dataset"].strip())
        if kind == "file" and not Path(raw["dataset"].strip()).expanduser().is_file():
            add(Problem("dataset", raw["dataset"], "no such file; check the path (or upload it)"))
        elif kind == "unknown":
            add(Problem("dataset", raw["dataset"], "not a file path with a known suffix "
                        f"({', '.join(FILE_SUFFIXES)}) or a hub id such as nyu-mll/glue:rte"))
    fs = _file_source()
    if fs and not problems.get("dataset"):
        try:
            _, warnings = _rows(*fs)
            if decoder:
                m = lm_mapping()
                if m["prompt"] and m["prompt"] == m["target"]:
                    add(Problem("target", m["target"], "the target column must differ from the "
                                "prompt column: pick the column with the text to generate"))
                elif m["answer"] and m["answer"] == m["prompt"]:
                    add(Problem("answer", m["answer"], "the answer column must differ from the "
                                "prompt column; pick the final-answer column or (none)"))
                else:
                    for p in _check_lm_rows(*fs, m["prompt"], m["target"], m["answer"],
                                            yaml.safe_dump(cfg.to_dict())):
                        add(p)
            else:
                for p in _check_rows(*fs, yaml.safe_dump(cfg.to_dict()))[0]:
                    add(p)
        except ConfigError as e:
            for p in e.problems:
                add(p)
    return cfg, problems, methods, seeds, warnings, decoder


# ---------------------------------------------------------------------------------------
# Drawing

st.title("Setup")
st.caption("Choose a model and a dataset, the methods to train side by side, and the settings. "
           "Every method gets the same seed, data order, optimizer and steps: only the loss "
           "differs.")

if ss.get("setup_msg"):   # e.g. "Loaded the config of <experiment>" from Runs' Relaunch
    st.success(ss.pop("setup_msg"), icon=":material/replay:")

with st.expander("Load or save a config (YAML)"):
    st.file_uploader("Load a config file", type=["yaml", "yml", "json"], key="yaml_widget",
                     on_change=_on_yaml, help="A file saved here or by `dynsdpb train --dump`.")
    if ss.get("yaml_msg"):
        kind, msg = ss["yaml_msg"]
        getattr(st, kind)(msg)
    save_slot = st.empty()

# The built-in datasets offered follow the model: generation datasets for a decoder,
# classification ones for an encoder, all of them when the kind is unknown (a hub id).
_model = ss["w_model_other"] if ss["w_model_choice"] == OTHER_MODEL else ss["w_model_choice"]
family = forms.model_family(str(_model))
BUILTINS = forms.builtin_datasets()
DATASETS = forms.datasets_for(family)
if ss["w_data_builtin"] not in DATASETS:
    ss["w_data_builtin"] = DATASETS[0]

_guess_mapping()
cfg, problems, methods, seeds, data_warnings, decoder = collect()
VALUES = cfg.to_dict()
shown: set[str] = set()


def show_problems(name: str, where=st) -> None:
    for p in problems.get(name, []):
        where.error(f"**{name}** = `{p.value}`: {p.fix}", icon=":material/warning:")
    shown.add(name)


def field(name: str, where=st) -> None:
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
    show_problems(name, where)


def grid(names: list[str], ncols: int = 3) -> None:
    """Fields in columns: only those this kind of model reads (forms.field_applies)."""
    names = [n for n in names if forms.field_applies(n, decoder, VALUES)]
    cols = st.columns(ncols)
    for i, n in enumerate(names):
        with cols[i % ncols]:
            field(n)


# Presets: whole experiments shipped as YAML in assets/presets/ (dynsdpb/presets.py). The
# quick demo makes MiniLM on tweets finish in a few minutes on a laptop CPU (measured: 111 s
# for vanilla + dynsdpb, 2-core CPU), for a class to watch.
PRESETS = {n: load_preset(n) for n in list_presets()}


def _preset_summary(exp) -> str:
    """The preset's values that differ from the defaults, plus its methods and seeds."""
    d = exp.base.to_dict()
    changed = [f"{k}={v}" for k, v in d.items()
               if k not in ("method", "seed", "name") and v != getattr(DEFAULTS, k)]
    return ", ".join(changed + [f"methods={','.join(exp.methods)}",
                                f"seeds={','.join(map(str, exp.seeds))}"])


def _load_preset(name: str, label: str) -> None:
    exp = PRESETS[name]
    notes = forms.prefill_setup(exp.base.to_dict(), methods=exp.methods, seeds=exp.seeds)
    ss["preset_msg"] = (f"{label} loaded: {_preset_summary(exp)}. Change any of them below."
                        + "".join(" " + n for n in notes))


# At the top: a preset sets every field below, so it is the first choice, not the last.
c1, c2, c3 = st.columns([3, 1, 1.4], vertical_alignment="bottom")
c1.selectbox("preset", list(PRESETS), key="w_preset",
             format_func=lambda n: f"{n}: {PRESETS[n].description}",
             help="A whole experiment (model, data, methods, seeds, every field) from "
             "assets/presets/; `dynsdpb compare --preset NAME` runs the same.")
c2.button("Load preset", key="btn_load_preset", width="stretch",
          on_click=lambda: _load_preset(ss["w_preset"], f"Preset {ss['w_preset']}"))
# The quick demo follows the model kind: with a decoder picked, the decoder demo (when the
# engine ships one) instead of MiniLM on tweets.
QUICK = "decoder-quick-demo" if decoder and "decoder-quick-demo" in PRESETS else "quick-demo"
c3.button("Quick demo settings", key="btn_quick_demo", on_click=_load_preset,
          args=(QUICK, "Quick demo settings"), icon=":material/bolt:", width="stretch",
          help="Fewer steps, shorter inputs and smaller splits, so a pretrained model finishes "
          "in a few minutes on a CPU: " + _preset_summary(PRESETS[QUICK]))
if ss.get("preset_msg"):
    st.caption(ss.pop("preset_msg"))

# -- model -------------------------------------------------------------------------------
st.subheader("1 · Model")
c1, c2 = st.columns([1, 2])
with c1:
    st.selectbox("model", list(BUILTIN_MODELS) + [OTHER_MODEL], key="w_model_choice",
                 persist_state="session", help=C.field_help("model"))
with c2:
    if ss["w_model_choice"] == OTHER_MODEL:
        st.text_input("local folder or hub id", key="w_model_other", persist_state="session",
                      placeholder="./my-model or prajjwal1/bert-tiny",
                      help="A folder with config.json and safetensors weights, or a hub id "
                           "(needs network).")
        field("trust_remote_code")
    else:
        st.caption(BUILTIN_MODELS[ss["w_model_choice"]].description)
show_problems("model")

# -- data --------------------------------------------------------------------------------
st.subheader("2 · Dataset")
st.radio("source", [DATA_BUILTIN, DATA_UPLOAD, DATA_PATH], key="w_data_source",
         persist_state="session", horizontal=True,
         label_visibility="collapsed")
src = ss["w_data_source"]
if src == DATA_BUILTIN:
    c1, c2 = st.columns([1, 2])
    with c1:
        st.selectbox("dataset", DATASETS, key="w_data_builtin", persist_state="session",
                     format_func=lambda n: f"{n} ({BUILTINS[n][0]})",
                     help=C.field_help("dataset") + (
                         " A decoder model trains on generation datasets (prompt -> target "
                         "text)." if family == "decoder" else ""))
    with c2:
        st.caption(BUILTINS[ss["w_data_builtin"]][1])
        if ss["w_data_builtin"] == "tweets-sentiment":
            field("min_confidence")
elif src == DATA_UPLOAD:
    st.file_uploader("CSV, TSV, JSONL, JSON or Parquet with a header row / named fields"
                     + (": a prompt and a target column, optionally a final answer"
                        if decoder else ""),
                     type=[s.lstrip(".") for s in FILE_SUFFIXES], key="upload_widget",
                     on_change=_on_upload)
    if not decoder:
        # A small made-up file (assets/sample/, scripts/make_sample.py) to try the upload with.
        st.download_button("Sample CSV to try (210 short reviews, 3 labels)",
                           (ASSETS / "sample" / "reviews.csv").read_bytes(), "reviews.csv",
                           mime="text/csv", key="btn_sample_csv", icon=":material/download:")
    if ss.get("upload"):
        c1, c2 = st.columns([3, 1])
        c1.caption(f"Using **{ss['upload']['name']}** ({len(ss['upload']['data']) / 1e3:.1f} kB). "
                   "It is stored inside the experiment's folder when you start.")
        if c2.button("Remove file", key="btn_remove_upload"):
            ss.pop("upload", None)
            st.rerun()
else:
    st.text_input("file path or hub id", key="w_data_path", persist_state="session",
                  placeholder="data/my.csv or nyu-mll/glue:rte", help=C.field_help("dataset"))
show_problems("dataset")

fs = _file_source() if not problems.get("dataset") else None
if src != DATA_BUILTIN:
    rows: list[dict] = []
    if fs:
        try:
            rows, _ = _rows(*fs)
        except ConfigError:
            rows = []
    if rows and decoder:
        cols = [str(c) for c in rows[0].keys()]
        st.markdown("**Column mapping**: which column holds the prompt, the target text to "
                    "learn, and (optionally) the final answer that exact match compares with.")
        c1, c2, c3 = st.columns(3)
        for col, k, opts, help_ in (
                (c1, "prompt", cols, "The model's input; it goes through the chat template "
                 "and is masked from the loss."),
                (c2, "target", cols, "The text the model learns to generate (CE and KD on "
                 "its tokens only)."),
                (c3, "answer", [""] + cols, "Optional: the final answer; exact match compares "
                 "it with the last number of the generation. Without it there is no exact "
                 "match (n/a); loss and perplexity still are measured.")):
            with col:
                st.selectbox(f"{k} column", opts, key=f"w_lm_{k}", persist_state="session",
                             format_func=lambda c: c or "(none)", help=help_)
                show_problems(k)
        st.dataframe(rows[:5], hide_index=True, width="stretch")
        st.caption(f"{len(rows)} rows; the first 5 are shown. The run gets these columns "
                   "renamed prompt/target/answer (a JSONL stored in the experiment's folder).")
        for w in data_warnings:
            st.info(w)
    elif rows:
        cols = [str(c) for c in rows[0].keys()]
        st.markdown("**Column mapping**: which column holds what.")
        c1, c2, c3 = st.columns(3)
        with c1:
            st.selectbox("text_column", cols, key="w_text_column", persist_state="session",
                         help=C.field_help("text_column"))
            show_problems("text_column")
            number = forms.numeric_column(rows, ss["w_text_column"])
            if number is not None:
                # Numbers train nothing useful (an id column is the usual mistake), but the
                # engine would accept them as text: warn rather than refuse.
                other = forms.guess_text_column(rows, cols, exclude={ss["w_label_column"]})
                st.warning(f"**text_column** = `{ss['w_text_column']}` holds numbers only "
                           f"(e.g. `{number}`), not text: pick the column with the text"
                           + (f", e.g. `{other}`." if other else "."),
                           icon=":material/warning:")
        with c2:
            st.selectbox("text_pair_column", [""] + cols, key="w_text_pair_column",
                         persist_state="session",
                         format_func=lambda c: c or "(none: single sentences)",
                         help=C.field_help("text_pair_column"))
            show_problems("text_pair_column")
        with c3:
            st.selectbox("label_column", cols, key="w_label_column", persist_state="session",
                         help=C.field_help("label_column"))
            show_problems("label_column")
        st.dataframe(rows[:5], hide_index=True, width="stretch")
        st.caption(f"{len(rows)} rows; the first 5 are shown.")
        if not any(problems.get(n) for n in ("dataset", "text_column", "label_column",
                                             "text_pair_column", "task")):
            # What the engine itself read from this mapping (rows_to_taskdata), before Start
            _, task, classes = _check_rows(*fs, yaml.safe_dump(cfg.to_dict()))
            if classes:
                st.markdown(f"**Detected classes** in `{ss['w_label_column']}` ({len(classes)}, "
                            f"rows per class after dropping empty and repeated rows): "
                            + " · ".join(f"`{n}` {c}" for n, c in classes))
            elif task == "regression":
                st.markdown(f"**Regression**: `{ss['w_label_column']}` holds numeric targets "
                            "(more than 20 distinct values or not whole numbers).")
        for w in data_warnings:
            st.info(w)
    elif decoder:
        st.caption("A decoder's file needs a prompt and a target column (optionally answer); "
                   "pick them once the file is readable.")
    else:
        c1, c2, c3 = st.columns(3)
        with c1:
            st.text_input("text_column", key="w_text_column", persist_state="session",
                          help=C.field_help("text_column"))
            show_problems("text_column")
        with c2:
            st.text_input("text_pair_column", key="w_text_pair_column", persist_state="session",
                          help=C.field_help("text_pair_column"))
            show_problems("text_pair_column")
        with c3:
            st.text_input("label_column", key="w_label_column", persist_state="session",
                          help=C.field_help("label_column"))
            show_problems("label_column")
with st.expander("Splits and length", expanded=any(problems.get(n) for n in (
        "task", "max_train_samples", "val_size", "test_size", "split_seed", "max_len"))):
    grid(["task", "max_train_samples", "val_size", "test_size", "split_seed", "max_len"])

# -- methods -----------------------------------------------------------------------------
st.subheader("3 · Methods")
c1, c2, c3 = st.columns([2, 1, 1])
with c1:
    st.multiselect("methods to run side by side", list(C.METHODS), key="w_methods",
                   persist_state="session",
                   help=C.field_help("method") + " Keep vanilla as the baseline.")
    show_problems("methods")
with c2:
    st.text_input("seeds", key="w_seeds", persist_state="session",
                  help="Comma-separated, e.g. 0,1,2: every method runs "
                  "once per seed, so the summary can report mean, std and a paired difference "
                  "to vanilla.")
    show_problems("seeds")
with c3:
    field("budget")
if methods and "vanilla" not in methods:
    st.info("No vanilla arm: the comparison to the baseline (paired difference) will be missing.")
n_arms = len(methods) * len(seeds)
st.caption(f"{n_arms} run(s): {', '.join(f'{m}-s{s}' for s in seeds for m in methods) or '-'}. "
           "They train in lockstep, one step each in turn.")

if "dlb" in methods or "dynsdpb" in methods:
    both = "dlb" in methods and "dynsdpb" in methods
    dl, dy = st.columns(2) if both else (st.container(), st.container())
    if "dlb" in methods:
        with dl:
            st.markdown(common.method_chip("dlb") + " &nbsp; one alpha and tau for all samples "
                        "[static: paper (DLB); warmup, linear: ours]",
                        unsafe_allow_html=True)
            grid(["schedule", "alpha", "tau", "warmup_alpha_steps"], 2 if both else 4)
            if ss.get("schedule_note"):
                st.info(ss.pop("schedule_note"))
            ok, text = forms.formula_text(cfg, "dlb", problems)
            if ok:
                st.caption(text)
            else:
                st.warning(text, icon=":material/functions:")
    if "dynsdpb" in methods:
        with dy:
            st.markdown(common.method_chip("dynsdpb") + " &nbsp; dynamic alpha and tau "
                        "[paper: the idea; formulas: ours]", unsafe_allow_html=True)
            grid(["alpha_max", "tau_0", "tau_min", "tau_max", "granularity", "tau_direction"],
                 2 if both else 3)
            ok, text = forms.formula_text(cfg, "dynsdpb", problems)
            if ok:
                st.caption(text)
            else:
                st.warning(text, icon=":material/functions:")

# -- decoder models only: how the arms are fine-tuned, the teacher cache, generation --------
DECODER_ROWS = [
    ("Fine-tuning: LoRA adapters on one frozen base shared by every arm, or full fine-tuning",
     ["finetune", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "save_format"]),
    ("Teacher cache: what is kept of each target token's previous-step prediction",
     ["kd_cache", "top_k"]),
    ("Evaluation: greedy generation on the validation set",
     ["max_new_tokens", "eval_generations"]),
]
if decoder:
    with st.container(border=True):
        st.markdown("**Decoder model (causal LM)**: token-level distillation on the target "
                    "tokens; exact match of the generated answers. See Learn §4.")
        for caption, names in DECODER_ROWS:
            st.caption(caption)
            grid(names, 3)
        if cfg.kd_cache == "topk" and not problems.get("top_k") and max(
                cfg.tau, cfg.tau_max) >= 3:
            st.caption(f"top_k = {cfg.top_k} at tau >= 3 keeps little of the teacher: at tau "
                       "3.6 the top 64 of SmolLM2's 49k tokens hold about 3% of the mass, so KD "
                       "sees mostly the {top-k, rest} split (Learn §4). kd_cache = full keeps "
                       "everything, at 2 bytes x vocabulary per target token.")

# -- optimisation and bookkeeping ----------------------------------------------------------
st.subheader("4 · Training")
st.caption("Optimisation, the same for every arm: AdamW with a learning rate that warms up "
           "over the first `lr warm-up share` of the steps, then decays linearly to 0.")
grid(["steps", "batch_size", "lr", "weight_decay", "warmup_ratio", "grad_clip"])
with st.expander("Evaluation, checkpoints, device", expanded=any(problems.get(n) for n in (
        "eval_every", "probe_size", "checkpoint_every", "save_model", "device"))):
    grid(["eval_every", "probe_size", "checkpoint_every", "device", "save_model"])

# -- problems not shown yet (hidden fields) and Start ---------------------------------------
st.divider()
left = [p for n, ps in problems.items() if n not in shown for p in ps]
for p in left:
    st.error(f"**{p.field}** = `{p.value}`: {p.fix}", icon=":material/warning:")
n_problems = sum(len(v) for v in problems.values())

c1, c2, c3 = st.columns([2, 1, 3])
with c1:
    st.text_input("experiment name (optional)", key="w_exp_name", persist_state="session",
                  help="A folder-safe name is derived from it; empty: date and dataset.")
with c2:
    st.write("")
    start = st.button("Start", type="primary", key="btn_start", disabled=n_problems > 0,
                      width="stretch")
with c3:
    st.write("")
    if n_problems:
        st.warning(f"Start is off until the {n_problems} problem(s) marked above are fixed.")
    else:
        jm = common.manager()
        busy = jm.current()
        st.caption("Runs in the background: you can close the browser, it keeps going."
                   + (" Another experiment is training; this one waits in the queue." if busy
                      else ""))

with st.expander("Sweep: run this experiment over a grid"):
    # A grid of fields around the config above (dynsdpb/sweep.py): each cell runs the methods
    # x seeds chosen above; baselines that do not read a swept field run once. The runs are
    # queued (Live shows the queue); Compare draws the gain per cell as a heatmap.
    st.text_area("grid: one field per line, NAME=v1,v2,...", "alpha_max=0.5,1,2\nlr=2e-5,5e-5",
                 key="w_sweep_grid", height=80)
    st.text_input("sweep name", key="w_sweep_name", placeholder="e.g. alpha-x-lr")
    if st.button("Queue the sweep", key="btn_sweep", disabled=bool(n_problems)):
        import time
        from dynsdpb import sweep as SW
        from dynsdpb.store import safe_name
        try:
            grid = SW.parse_grid([ln for ln in ss["w_sweep_grid"].splitlines() if ln.strip()])
            name = str(ss["w_sweep_name"]).strip() or time.strftime("sweep-%Y%m%d-%H%M%S")
            folder = common.runs_dir() / safe_name(name)
            SW.create_sweep(folder, cfg, methods, seeds, grid=grid, name=name)
            ids = SW.queue_grid(common.manager(), folder)
        except ConfigError as e:
            for p in e.problems:
                st.error(f"**{p.field}** = `{p.value}`: {p.fix}", icon=":material/warning:")
        else:
            st.success(f"Queued {len(ids)} runs for {len(SW.expand_grid(grid))} cells in "
                       f"`{folder.name}`; see Live for the queue and Compare for the heatmap.")

if not n_problems:
    # The whole experiment: every field, the methods and the seeds (load_experiment reads it).
    exp_yaml = dump_experiment(cfg, methods, seeds, name=str(ss["w_exp_name"]).strip())
    save_slot.download_button("Save this experiment (YAML)", exp_yaml, "dynsdpb-experiment.yaml",
                              mime="text/yaml", key="btn_save_yaml",
                              help="Every field plus methods and seeds; load it here again, or "
                                   "run it with `dynsdpb compare --config FILE`.")
else:
    save_slot.caption("Fix the marked problems to save the config.")

if start:
    if n_problems:
        st.error("Start refused: fix the problems marked above first.")
    else:
        jm = common.manager()
        upload = None
        if ss["w_data_source"] == DATA_UPLOAD and ss.get("upload"):
            upload = (ss["upload"]["name"], ss["upload"]["data"])
        fs = _file_source()
        if decoder and fs:
            # The engine reads columns named prompt/target/answer: hand it the file with the
            # mapped columns under those names (stored in the experiment folder). A local
            # file already named so is used where it is.
            rows, _ = _rows(*fs)
            m = lm_mapping()
            cols = [str(c) for c in rows[0]] if rows else []
            same = {"prompt": "prompt", "target": "target",
                    "answer": "answer" if "answer" in cols else ""}
            if upload or m != same:
                upload = (Path(fs[1]).stem + ".jsonl", forms.mapped_jsonl(rows, m))
        try:
            job = jm.submit(cfg, methods, seeds, name=str(ss["w_exp_name"]).strip(), upload=upload)
        except ConfigError as e:
            for p in e.problems:
                st.error(f"**{p.field}** = `{p.value}`: {p.fix}", icon=":material/warning:")
        else:
            ss["live_exp"] = job.id
            st.switch_page(common.ROOT / "pages" / "live.py")
