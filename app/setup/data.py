"""Setup's data source: the built-in datasets a model trains on, an uploaded or local file
(read once per content, checked with the engine's own data checks), the column mapping
(guessed for a new file; an encoder's text/label/pair columns or a decoder's prompt/target/
answer), and the file a Start hands the engine.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import streamlit as st
import yaml

from app import forms
from app.forms import DATA_BUILTIN, DATA_PATH, DATA_UPLOAD, OTHER_MODEL
from dynsdpb import config as C
from dynsdpb.encoder.data import rows_to_taskdata
from dynsdpb.tables import FILE_SUFFIXES, read_table
from dynsdpb.errors import ConfigError, Problem
from dynsdpb.paths import ASSETS

ss = st.session_state


def on_upload() -> None:
    f = ss.get("upload_widget")
    if f is not None:
        data = f.getvalue()
        ss["upload"] = {"name": f.name, "data": data, "sha1": hashlib.sha1(data).hexdigest()}
        ss.pop("w_text_column", None)   # re-guess the mapping for the new file
        ss.pop("w_label_column", None)
        ss.pop("w_text_pair_column", None)
        for k in forms.LM_COLUMNS:
            ss.pop(f"w_lm_{k}", None)


@st.cache_data(show_spinner=False, max_entries=8)
def file_rows(key: str, name: str, _data: bytes | None) -> tuple[list[dict], list[str]]:
    """Rows of the chosen file; `key` names its content (arguments with _ are not hashed)."""
    return read_table(name, _data)


@st.cache_data(show_spinner=False, max_entries=32)
def check_lm_rows(key: str, name: str, _data: bytes | None, prompt: str, target: str,
                   answer: str, cfg_yaml: str) -> list[Problem]:
    """The engine's checks of a decoder's file (prompt/target present, split sizes), on the
    rows with the mapped columns renamed as the engine reads them."""
    from dynsdpb.decoder.data import splits_from_records
    from dynsdpb.decoder.task import AUTO_TEST, AUTO_VAL
    rows, _ = file_rows(key, name, _data)
    cfg = C.from_dict(yaml.safe_load(cfg_yaml), check=False)
    mapped = forms.map_lm_rows(rows, {"prompt": prompt, "target": target, "answer": answer})
    try:
        splits_from_records(mapped, name, cfg.split_seed, cfg.max_train_samples,
                            cfg.val_size or AUTO_VAL, cfg.test_size or AUTO_TEST)
    except ConfigError as e:
        return e.problems
    return []


@st.cache_data(show_spinner=False, max_entries=32)
def check_rows(key: str, name: str, _data: bytes | None, cfg_yaml: str
                ) -> tuple[list[Problem], str, list[tuple[str, int]]]:
    """The engine's data checks (columns, labels, split sizes) on the chosen file, and what
    it read: (problems, task, [(class, rows)] over all splits; [] for regression)."""
    rows, _ = file_rows(key, name, _data)
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


def file_source() -> tuple[str, str, bytes | None] | None:
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


def guess_mapping() -> None:
    """For a readable file, make the column widgets hold existing columns (guessing names)."""
    if ss["w_data_source"] == DATA_BUILTIN:
        return
    fs = file_source()
    if not fs:
        return
    try:
        rows, _ = file_rows(*fs)
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



def lm_mapping() -> dict[str, str]:
    return {k: str(ss.get(f"w_lm_{k}") or "") for k in forms.LM_COLUMNS}



def offered_datasets() -> tuple[str | None, dict[str, tuple[str, str]], list[str]]:
    """(the model's family, every built-in dataset, those offered). The built-in datasets
    offered follow the model: generation datasets for a decoder, classification ones for an
    encoder, all of them when the kind is unknown (a hub id)."""
    model = ss["w_model_other"] if ss["w_model_choice"] == OTHER_MODEL else ss["w_model_choice"]
    family = forms.model_family(str(model))
    builtins = forms.builtin_datasets()
    datasets = forms.datasets_for(family)
    if ss["w_data_builtin"] not in datasets:
        ss["w_data_builtin"] = datasets[0]
    return family, builtins, datasets


def draw_source(form, family: str | None, builtins: dict[str, tuple[str, str]],
                datasets: list[str]) -> None:
    """Where the data comes from: a built-in dataset, an uploaded file or a path (hub id);
    `form` (app.setup.form.Form) draws the fields and their problems."""
    decoder = form.decoder
    st.radio("source", [DATA_BUILTIN, DATA_UPLOAD, DATA_PATH], key="w_data_source",
             persist_state="session", horizontal=True,
             label_visibility="collapsed")
    src = ss["w_data_source"]
    if src == DATA_BUILTIN:
        c1, c2 = st.columns([1, 2])
        with c1:
            st.selectbox("dataset", datasets, key="w_data_builtin", persist_state="session",
                         format_func=lambda n: f"{n} ({builtins[n][0]})",
                         help=C.field_help("dataset") + (
                             " A decoder model trains on generation datasets (prompt -> target "
                             "text)." if family == "decoder" else ""))
        with c2:
            st.caption(builtins[ss["w_data_builtin"]][1])
            if ss["w_data_builtin"] == "tweets-sentiment":
                form.field("min_confidence")
    elif src == DATA_UPLOAD:
        st.file_uploader("CSV, TSV, JSONL, JSON or Parquet with a header row / named fields"
                         + (": a prompt and a target column, optionally a final answer"
                            if decoder else ""),
                         type=[s.lstrip(".") for s in FILE_SUFFIXES], key="upload_widget",
                         on_change=on_upload)
        if not decoder:
            # A small made-up file (assets/sample/, scripts/make_sample.py) to try the upload with.
            st.download_button("Sample CSV to try (210 short reviews, 3 labels)",
                               (ASSETS / "sample" / "reviews.csv").read_bytes(), "reviews.csv",
                               mime="text/csv", key="btn_sample_csv", icon=":material/download:")
        if ss.get("upload_note"):
            st.info(ss.pop("upload_note"), icon=":material/info:")
        if ss.get("upload"):
            c1, c2 = st.columns([3, 1])
            c1.caption(f"Using **{ss['upload']['name']}** "
                       f"({len(ss['upload']['data']) / 1e3:.1f} kB). "
                       "It is stored inside the experiment's folder when you start.")
            if c2.button("Remove file", key="btn_remove_upload"):
                ss.pop("upload", None)
                st.rerun()
    else:
        st.text_input("file path or hub id", key="w_data_path", persist_state="session",
                      placeholder="data/my.csv or nyu-mll/glue:rte", help=C.field_help("dataset"))
    form.show_problems("dataset")


def draw_mapping(form, cfg: C.RunConfig, data_warnings: list[str]) -> None:
    """Below a file source: which column holds what (picked from the readable file's columns,
    with its first rows and what the engine reads from them), or typed in until it is
    readable."""
    if ss["w_data_source"] == DATA_BUILTIN:
        return
    fs = file_source() if not form.problems.get("dataset") else None
    rows: list[dict] = []
    if fs:
        try:
            rows, _ = file_rows(*fs)
        except ConfigError:
            rows = []
    if rows and form.decoder:
        _decoder_columns(form, rows)
    elif rows:
        _encoder_columns(form, cfg, rows, fs)
    elif form.decoder:
        st.caption("A decoder's file needs a prompt and a target column (optionally answer); "
                   "pick them once the file is readable.")
    else:
        _typed_columns(form)
    if rows:
        for w in data_warnings:
            st.info(w)


def _decoder_columns(form, rows: list[dict]) -> None:
    """A decoder's file: the prompt, target and (optional) answer columns."""
    show_problems = form.show_problems
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


def _encoder_columns(form, cfg: C.RunConfig, rows: list[dict], fs: tuple) -> None:
    """An encoder's file: the text, pair and label columns, and the classes the engine reads."""
    problems, show_problems = form.problems, form.show_problems
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
        _, task, classes = check_rows(*fs, yaml.safe_dump(cfg.to_dict()))
        if classes:
            st.markdown(f"**Detected classes** in `{ss['w_label_column']}` ({len(classes)}, "
                        f"rows per class after dropping empty and repeated rows): "
                        + " · ".join(f"`{n}` {c}" for n, c in classes))
        elif task == "regression":
            st.markdown(f"**Regression**: `{ss['w_label_column']}` holds numeric targets "
                        "(more than 20 distinct values or not whole numbers).")


def _typed_columns(form) -> None:
    """A file not readable (yet): the column names as text."""
    show_problems = form.show_problems
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


def upload_for_start(decoder: bool) -> tuple[str, bytes] | None:
    """The file a Start hands the engine with the experiment (stored in its folder): the
    uploaded file, or for a decoder the file with the mapped columns renamed."""
    upload = None
    if ss["w_data_source"] == DATA_UPLOAD and ss.get("upload"):
        upload = (ss["upload"]["name"], ss["upload"]["data"])
    fs = file_source()
    if decoder and fs:
        # The engine reads columns named prompt/target/answer: hand it the file with the
        # mapped columns under those names (stored in the experiment folder). A local
        # file already named so is used where it is.
        rows, _ = file_rows(*fs)
        m = lm_mapping()
        cols = [str(c) for c in rows[0]] if rows else []
        same = {"prompt": "prompt", "target": "target",
                "answer": "answer" if "answer" in cols else ""}
        if upload or m != same:
            upload = (Path(fs[1]).stem + ".jsonl", forms.mapped_jsonl(rows, m))
    return upload
