"""The app's wiring, through streamlit.testing.v1.AppTest (no browser).

Numbers are tested below the UI (test_engine*, test_loss, ...). Here: the Setup form starts a
tiny run, the Live page shows it finishing with points on every chart, invalid input is
shown and starts nothing, and the Compare / Runs / Learn pages render real runs.
"""
from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
MAIN = str(ROOT / "app" / "main.py")
PAGES = ROOT / "pages"
SMALL = dict(steps="3", batch_size="4", val_size="10", test_size="10", max_len="16",
             eval_every="1", probe_size="8", checkpoint_every="0", warmup_ratio="0.0")


def write_csv(path: Path, n: int = 120) -> Path:
    rng = random.Random(0)
    words = {"pos": ["good", "great", "love", "nice", "fine", "happy"],
             "neg": ["bad", "awful", "hate", "poor", "sad", "ugly"]}
    lines = ["text,label"]
    for i in range(n):
        lab = "pos" if i % 2 else "neg"
        lines.append(" ".join(rng.choice(words[lab]) for _ in range(5)) + f",{lab}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    """A fresh runs directory and a fresh JobManager (st.cache_resource is shared per process)."""
    d = tmp_path / "runs"
    monkeypatch.setenv("DYNSDPB_RUNS_DIR", str(d))
    st.cache_resource.clear()
    yield d
    st.cache_resource.clear()   # on_release closes the manager: its worker thread ends


@pytest.fixture
def csv(tmp_path) -> Path:
    return write_csv(tmp_path / "tiny.csv")


def new_app() -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def fill_setup(at: AppTest, csv: Path, methods=("vanilla", "dynsdpb"), **fields) -> None:
    """What a user does on the Setup page: tiny model, the CSV by path, small settings."""
    ss = at.session_state
    ss["w_model_choice"] = "tiny-random-bert"
    ss["w_data_source"] = "local file path or hub id"
    ss["w_data_path"] = str(csv)
    ss["w_methods"] = list(methods)
    for k, v in {**SMALL, "save_model": False, **fields}.items():
        ss["f_" + k] = v
    at.run()
    assert not at.exception, [e.value for e in at.exception]


def specs(at: AppTest) -> list[dict]:
    """Plotly figures on the page: st.plotly_chart specs, or the figures of the Live page's
    zoom-keeping chart component (app/livechart.py), in page order per kind."""
    from app.livechart import figure_of
    return [figure_of(c, at.session_state)
            for c in at.get("bidi_component") + at.get("plotly_chart")
            if "dynsdpb.visibility" not in str(getattr(c.proto, "component_name", ""))]


def points(spec: dict, name: str) -> int:
    """Number of y values in the traces named `name` (bands are named '<arm> alpha max' etc.)."""
    return sum(len(t.get("y") or []) for t in spec["data"] if t.get("name") == name)


def texts(at: AppTest) -> str:
    return "\n".join([m.value for m in at.markdown] + [c.value for c in at.caption]
                     + [e.value for e in at.error] + [w.value for w in at.warning])


def train_experiment(runs: Path, csv: Path, name: str = "", **cfg_kw) -> str:
    """Two finished arms without the UI (for the pages that only read runs)."""
    from app import common
    from dynsdpb.config import RunConfig
    jm = common.manager()
    cfg = RunConfig(**{**dict(model="tiny-random-bert", dataset=str(csv), steps=3, batch_size=4,
                              val_size=10, test_size=10, max_len=16, eval_every=1,
                              probe_size=8, checkpoint_every=0, save_model=True), **cfg_kw})
    job = jm.submit(cfg, ["vanilla", "dynsdpb"], [0], name=name)
    assert jm.wait_idle(120), "tiny run did not finish"
    assert not job.error, job.error
    return job.id


# ---------------------------------------------------------------------------------------


def test_setup_starts_run_live_shows_it_finished_with_points(runs_dir, csv):
    t0 = time.time()
    at = new_app()
    fill_setup(at, csv)
    assert not at.error, [e.value for e in at.error]
    start = at.button(key="btn_start")
    assert not start.disabled
    start.click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "Live"          # Start switched to the Live page

    exps = [p for p in runs_dir.iterdir() if (p / "experiment.json").is_file()]
    assert len(exps) == 1
    arms = json.loads((exps[0] / "experiment.json").read_text())["arms"]
    assert sorted(arms) == ["dynsdpb-s0", "vanilla-s0"]

    # AppTest does not fire run_every timers: rerun until the page says finished.
    deadline = time.time() + 90
    while time.time() < deadline:
        time.sleep(1.0)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        head = at.markdown[0].value if at.markdown else ""
        if any(f"{s}]" in head for s in ("finished", "failed", "stopped", "interrupted")):
            break
    page = texts(at)
    assert "finished]" in page, page[:2000]
    assert "3/3" in page or "6/6 steps" in page
    assert "latest step 3 of" in page
    import re
    assert re.search(r"· took \d+ (s|min)", page), page[:600]   # how long it ran, once done

    ch = specs(at)
    assert len(ch) == 5                     # + the drift split (update vs dropout part)
    val, alpha_tau, drift, drift_split, loss = ch
    assert {t["name"].split(" ")[0] for t in drift_split["data"]} >= {"dynsdpb-s0"}
    for arm in ("vanilla-s0", "dynsdpb-s0"):
        assert points(val, arm) == 3                  # eval_every = 1: steps 1..3
        assert points(loss, arm) == 3 * 3             # ce, kd, total: one point per step each
        assert any(t["name"] == arm and len(t["y"]) >= 1 for t in drift["data"])  # probe drift
    assert points(alpha_tau, "dynsdpb-s0") >= 2       # step 1 has no carried half
    assert all(t["name"] != "vanilla-s0" for t in alpha_tau["data"])
    # one fixed colour per method on every chart; zoom kept across updates
    colors = {}
    for spec in ch:
        assert spec["layout"]["uirevision"]
        for t in spec["data"]:
            if t.get("line", {}).get("width", 2) and "dynsdpb" in t.get("name", ""):
                colors.setdefault("dynsdpb", set()).add(t["line"]["color"])
            if t.get("name") == "vanilla-s0":
                colors.setdefault("vanilla", set()).add(t["line"]["color"])
    assert colors["dynsdpb"] == {"#d62728"} and colors["vanilla"] == {"#5f6b7a"}
    # the schedule and its formula, paper vs ours, are on the page
    assert "dynsdpb-v1" in page and "The formulas are ours" in page
    print(f"setup -> finished run -> charts: {time.time() - t0:.1f} s")


def test_invalid_input_is_shown_and_starts_nothing(runs_dir, csv):
    at = new_app()
    fill_setup(at, csv, steps="abc", batch_size="3", lr="-1")
    errors = "\n".join(e.value for e in at.error)
    assert "**steps** = `abc`: use a whole number" in errors
    assert "needs an even batch size" in errors and "try 4" in errors
    assert "**lr**" in errors and "> 0" in errors
    assert any("Start is off until the" in w.value for w in at.warning)
    start = at.button(key="btn_start")
    assert start.disabled
    from streamlit.testing.v1.errors import AppTestError
    with pytest.raises(AppTestError):   # a user cannot press it
        start.click()
    at.run()
    assert at.title[0].value == "Setup"
    assert not any((p / "experiment.json").exists() for p in runs_dir.glob("*"))
    from app import common
    assert not common.manager().is_active()

    # fixing the fields turns Start on again
    fill_setup(at, csv, steps="3", batch_size="4", lr="5e-5")
    assert not at.error and not at.button(key="btn_start").disabled

    # a method needs a seed list it can read
    at.session_state["w_seeds"] = "0, x"
    at.run()
    assert any("whole numbers separated by commas" in e.value for e in at.error)

    # a model folder that does not exist, and dynsdpb-v1 (an old config) as the dlb arm's
    # schedule: the form offers only dlb schedules, so it is set to static and says so
    at.session_state["w_seeds"] = "0,1"
    at.session_state["w_model_choice"] = "other: local folder or hub id"
    at.session_state["w_model_other"] = "./no/such/model"
    at.session_state["w_methods"] = ["vanilla", "dlb", "dynsdpb"]
    at.session_state["f_schedule"] = "dynsdpb-v1"
    at.run()
    errors = "\n".join(e.value for e in at.error)
    assert "no such folder" in errors
    assert at.session_state["f_schedule"] == "static"
    assert any("`dynsdpb-v1` is not a dlb schedule" in i.value for i in at.info)
    assert at.button(key="btn_start").disabled
    assert not any((p / "experiment.json").exists() for p in runs_dir.glob("*"))


def test_uploaded_file_gets_a_column_mapping(runs_dir, tmp_path):
    at = new_app()
    at.session_state["w_data_source"] = "upload a file"
    at.run()
    # before any upload: one line saying what to do, no "dataset = ``"
    assert [e.value for e in at.error] == [
        "**dataset** is empty: upload a CSV, TSV, JSONL, JSON or Parquet file"]
    data = "sentence;sentiment\n" + "\n".join(f"word{i} text;{'a' if i % 2 else 'b'}"
                                              for i in range(60))
    # sizes typed for an earlier dataset: a new upload switches them to auto and says so
    at.session_state["f_val_size"], at.session_state["f_test_size"] = "400", "800"
    at.session_state["upload"] = {"name": "mine.csv", "data": data.encode()}
    at.run()
    assert (at.session_state["f_val_size"], at.session_state["f_test_size"]) == ("0", "0")
    assert any("New file: val_size and test_size set to 0 (auto" in i.value for i in at.info)
    assert not any("usable rows" in e.value for e in at.error)
    # split sizes given again by hand (the default, 0 = auto, would fit 60 rows: 6 + 6 + 48)
    at.session_state["f_val_size"], at.session_state["f_test_size"] = "400", "800"
    at.run()
    assert not at.exception
    boxes = {s.label: s for s in at.selectbox}
    assert boxes["text_column"].value == "sentence"      # guessed
    assert boxes["label_column"].value == "sentiment"
    # the engine's own data checks appear next to the fields: 60 rows < 800 + 400 + 16
    assert any("usable rows" in e.value for e in at.error)
    assert at.button(key="btn_start").disabled

    # small enough splits: Start stores the upload inside the experiment folder
    for k, v in {**SMALL, "save_model": False}.items():
        at.session_state["f_" + k] = v
    at.session_state["w_model_choice"] = "tiny-random-bert"
    at.session_state["w_methods"] = ["vanilla"]
    at.run()
    assert not at.error, [e.value for e in at.error]
    at.button(key="btn_start").click().run()
    assert at.title[0].value == "Live"
    exp = next(p for p in runs_dir.iterdir() if (p / "experiment.json").is_file())
    assert (exp / "data" / "mine.csv").read_bytes() == data.encode()
    cfg = json.loads((exp / "vanilla-s0" / "config.json").read_text())
    assert cfg["dataset"] == str(exp / "data" / "mine.csv")
    assert (cfg["text_column"], cfg["label_column"]) == ("sentence", "sentiment")

    # relaunching it uploads the kept file again: the new experiment gets its own copy
    at.switch_page(str(PAGES / "runs.py")).run()
    at.button(key="btn_runs_relaunch").click().run()
    assert at.session_state["w_data_source"] == "upload a file"
    assert at.session_state["upload"]["data"] == data.encode()
    assert at.session_state["w_label_column"] == "sentiment"


def test_a_step_0_evaluation_is_drawn_from_step_0_on_every_page(runs_dir, csv):
    """eval_on_start writes a record of step 0 with validation metrics and no loss: Live and
    Compare draw the validation curve from step 0, the loss from step 1, without errors."""
    train_experiment(runs_dir, csv, eval_on_start=True, eval_every=2)
    at = new_app()
    for page in ("live.py", "compare.py", "runs.py"):
        at.switch_page(str(PAGES / page)).run()
        assert not at.exception, (page, [e.value for e in at.exception])
        if page == "runs.py":
            continue
        xs = {(c["layout"].get("title") or {}).get("text", ""): t["x"] for c in specs(at)
              for t in c["data"] if t.get("name") == "vanilla-s0"}
        val = [x for title, x in xs.items() if "val" in title.lower() or "valid" in title.lower()]
        assert val and all(x[0] == 0 for x in val), (page, xs)
        assert all(x[0] == 1 for title, x in xs.items() if title.lower().startswith("loss")), xs


def test_compare_page_renders_two_runs(runs_dir, csv):
    exp = train_experiment(runs_dir, csv)
    at = new_app()
    at.switch_page(str(PAGES / "compare.py")).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["w_cmp_pick"] == [f"{exp}/vanilla-s0", f"{exp}/dynsdpb-s0"] or \
        sorted(at.session_state["w_cmp_pick"]) == sorted([f"{exp}/vanilla-s0",
                                                          f"{exp}/dynsdpb-s0"])
    ch = {c["layout"]["title"]["text"]: c for c in specs(at)}
    # the default overlay, titled in words with units
    assert set(ch) == {"Validation accuracy (%)", "Loss (nats)", "Alpha (weight)",
                       "Logit drift (KL, nats)"}
    ch = dict(zip(("val_accuracy", "loss", "alpha", "logit_drift"),
                  (ch["Validation accuracy (%)"], ch["Loss (nats)"], ch["Alpha (weight)"],
                   ch["Logit drift (KL, nats)"])))
    for key in ("val_accuracy", "loss"):
        assert points(ch[key], "vanilla-s0") == 3 and points(ch[key], "dynsdpb-s0") == 3
    assert points(ch["alpha"], "dynsdpb-s0") >= 2 and points(ch["alpha"], "vanilla-s0") == 0
    frames = [df.value for df in at.dataframe]
    summary = frames[0]
    assert set(summary["method"]) == {"vanilla", "dynsdpb"}
    diff = frames[1]
    assert list(diff["field"]) == ["method"]             # the arms differ only in method
    # one HTML file for all charts (plotly.js once, tests/test_charts.py) + the metrics CSV
    assert [b.label for b in at.get("download_button")] == [
        "these charts (HTML, one file)", "metrics of the picked runs (CSV)"]
    # one unit for accuracy everywhere (%), and no "None" in any table
    assert "Test accuracy (%)" in summary.columns
    assert list(summary["seeds"]) == [1, 1] and "test items" in summary.columns
    # what the numbers stand on, and what makes them weak (one seed), above the table
    page = " ".join(m.value for m in at.markdown)
    assert "**Sample size:** 1 seed per method x" in page and "one test item = " in page
    assert any("One seed per method" in w.value for w in at.warning)
    assert "None" not in summary.to_string() and "None" not in diff.to_string()
    # the metric list is the engine's record keys (dynsdpb/records.py), not a copy of them
    from dynsdpb.records import PLOTTABLE
    options = at.multiselect(key="w_cmp_metrics").options
    assert {o.split(":")[0] for o in options} >= {"grad_norm", "alpha_lo", "tau_hi", "val_loss"}
    assert all(o.split(":")[0] in PLOTTABLE for o in options)


def test_runs_page_rename_relaunch_delete(runs_dir, csv):
    exp = train_experiment(runs_dir, csv, name="first")
    at = new_app()
    at.switch_page(str(PAGES / "runs.py")).run()
    assert not at.exception, [e.value for e in at.exception]
    table = at.dataframe[0].value
    assert list(table["name"]) == ["first"] and list(table["state"]) == ["finished"]

    # rename: a display name in experiment.json, the folder stays
    at.text_input(key=f"rename_{exp}").set_value("teaching demo").run()
    at.button(key="btn_runs_rename").click().run()
    meta = json.loads((runs_dir / exp / "experiment.json").read_text())
    assert meta["name"] == "teaching demo" and (runs_dir / exp).is_dir()
    assert list(at.dataframe[0].value["name"]) == ["teaching demo"]
    assert any("to teaching demo" in t.value for t in at.toast)     # the rename is confirmed
    # and Live's picker shows the new name at once
    at.switch_page(str(PAGES / "live.py")).run()
    assert at.selectbox(key="w_live_pick").options == [f"teaching demo  ({exp})"]
    at.switch_page(str(PAGES / "runs.py")).run()

    # test results in % (as on Compare), no "None" in the tables
    assert all(" %" in r for r in at.dataframe[0].value["test result (mean)"])
    assert "None" not in at.dataframe[1].value.to_string()

    # relaunch: the Setup form gets the experiment's config, methods and seeds
    at.button(key="btn_runs_relaunch").click().run()
    assert at.title[0].value == "Setup"
    # and says which experiment it loaded
    assert any("Loaded the config of **teaching demo**" in m.value and exp in m.value
               for m in at.success)
    assert at.session_state["w_model_choice"] == "tiny-random-bert"
    assert at.session_state["w_data_path"] == str(csv)
    assert at.session_state["f_steps"] == "3"
    assert at.session_state["w_methods"] == ["vanilla", "dynsdpb"]
    assert not at.error

    # delete asks first
    at.switch_page(str(PAGES / "runs.py")).run()
    at.button(key="btn_runs_delete").click().run()
    assert (runs_dir / exp).is_dir()
    assert any("cannot be undone" in w.value for w in at.warning)
    at.button(key="btn_runs_delete_yes").click().run()
    assert not (runs_dir / exp).exists()
    assert not at.exception


def test_learn_page_draws_layout_and_alpha_tau(runs_dir):
    at = new_app()
    at.switch_page(str(PAGES / "learn.py")).run()
    assert not at.exception, [e.value for e in at.exception]
    ch = specs(at)
    assert len(ch) == 3     # the layout, alpha/tau, and §5's gain decomposition
    heat = next(t for t in ch[1]["data"] if t["type"] == "heatmap")
    z = heat["z"]   # numpy arrays travel as plotly's typed arrays {dtype, bdata, shape}
    if isinstance(z, dict):
        import base64
        z = np.frombuffer(base64.b64decode(z["bdata"]), dtype=z["dtype"])
    assert float(np.max(z)) == pytest.approx(1.0)                    # alpha_max default
    at.slider(key="w_learn_u").set_value(1.0).run()
    assert at.metric[0].value == "0.000"                           # uniform predictions: alpha 0
    at.selectbox(key="w_learn_sched").set_value("warmup").run()
    assert not at.exception
    line = specs(at)[1]["data"][0]
    assert line["y"][0] == 0.0 and line["y"][-1] == 0.5


def test_stop_button_stops_a_running_experiment(runs_dir, csv):
    at = new_app()
    fill_setup(at, csv, steps="400", eval_every="200")
    at.button(key="btn_start").click().run()
    deadline = time.time() + 60
    while time.time() < deadline and not any("latest step" in c.value for c in at.caption):
        time.sleep(0.5)
        at.run()
    assert any("latest step" in c.value for c in at.caption), "no step was recorded"

    # a second experiment waits in the visible queue (one experiment trains at a time)
    at.switch_page(str(PAGES / "setup.py")).run()
    at.session_state["w_exp_name"] = "second"
    at.run()
    at.button(key="btn_start").click().run()
    assert at.title[0].value == "Live"
    at.switch_page(str(PAGES / "live.py"))            # AppTest stays on the page it was sent to
    at.session_state["w_live_follow"] = False         # stay on this one once it stops
    at.run()
    assert "waiting in the queue (position 1)" in at.markdown[0].value
    # the sidebar and the queue box on Live give the same count
    page = texts(at)
    assert "**Queue:** 1 experiment waiting" in page
    assert "**Queue**: 1 experiment waiting" in page
    at.button(key="btn_stop").click().run()           # removes it from the queue
    assert "stopped]" in at.markdown[0].value
    first = sorted(p.name for p in runs_dir.iterdir() if p.name != "second")[0]
    at.session_state["live_exp"] = first
    at.run()
    at.button(key="btn_stop").click().run()
    if "running]" in at.markdown[0].value:
        # while the step and the checkpoint finish: "stopping…" where Stop was, no Stop
        assert any("stopping…" in m.value for m in at.markdown)
        assert not [b for b in at.button if b.key == "btn_stop"]
    deadline = time.time() + 60
    while time.time() < deadline and not any(f"{s}]" in at.markdown[0].value
                                             for s in ("stopped", "finished", "failed")):
        time.sleep(0.5)
        at.run()
    assert "stopped]" in at.markdown[0].value, at.markdown[0].value
    exp = runs_dir / first
    for arm in ("vanilla-s0", "dynsdpb-s0"):
        st_ = json.loads((exp / arm / "status.json").read_text())
        assert st_["state"] == "stopped" and 0 < st_["step"] < 400
    assert at.button(key="btn_resume")              # offered where Stop was


def test_cut_off_run_shows_interrupted_with_its_metrics_and_resumes(runs_dir, csv):
    """A run whose process died (app restart, kill) reads as interrupted; Resume finishes it."""
    exp = train_experiment(runs_dir, csv)
    status = runs_dir / exp / "dynsdpb-s0" / "status.json"
    st_ = json.loads(status.read_text())
    st_.update(state="running", pid=2 ** 22 + 12345, owner="a-process-that-is-gone")
    status.write_text(json.dumps(st_))

    at = new_app()
    at.switch_page(str(PAGES / "runs.py")).run()
    assert list(at.dataframe[0].value["state"]) == ["interrupted"]
    arms = at.dataframe[1].value
    assert dict(zip(arms["run"], arms["state"])) == {"vanilla-s0": "finished",
                                                    "dynsdpb-s0": "interrupted"}
    # the model folder of a finished arm can be downloaded as a zip
    labels = [b.label for b in at.get("download_button")]
    assert "fine-tuned model (zip)" in labels
    from app import downloads
    import io
    import zipfile
    names = zipfile.ZipFile(io.BytesIO(downloads.zip_folder(
        runs_dir / exp / "vanilla-s0" / "model"))).namelist()
    assert "model/config.json" in names and any(n.endswith(".safetensors") for n in names)

    at.switch_page(str(PAGES / "live.py")).run()
    assert "interrupted]" in at.markdown[0].value
    assert any("ended before it finished" in w.value for w in at.warning)
    assert points(specs(at)[4], "dynsdpb-s0") == 9          # its metrics are intact (loss)

    at.button(key="btn_resume").click().run()
    deadline = time.time() + 60
    while time.time() < deadline and "finished]" not in at.markdown[0].value:
        time.sleep(0.5)
        at.run()
    statuses = {a: json.loads((runs_dir / exp / a / "status.json").read_text())
                for a in ("vanilla-s0", "dynsdpb-s0")}
    assert "finished]" in at.markdown[0].value, (at.markdown[0].value, statuses)


def test_quick_demo_button_fills_cpu_friendly_settings(runs_dir):
    at = new_app()
    assert at.session_state["f_steps"] != "60" and at.session_state["f_steps"] != 60
    at.button(key="btn_quick_demo").click().run()
    assert not at.exception
    steps = at.session_state["f_steps"]
    assert str(steps) == "60" and str(at.session_state["f_max_len"]) == "48"
    assert any("Quick demo settings loaded" in c.value for c in at.caption)
    assert not at.error and not at.button(key="btn_start").disabled


# ---------------------------------------------------------------------------------------
# Issue #8: Setup remembers, the saved experiment file, honest progress, cheap polling.


def downloaded(at: AppTest, key: str) -> bytes:
    """The bytes a download button hands the user (AppTest keeps them in memory storage)."""
    import gc
    button = next(b for b in at.get("download_button") if b.key == key)
    file_id = button.proto.url.rsplit("/", 1)[-1].split(".")[0]
    store = next(o for o in gc.get_objects() if type(o).__name__ == "MemoryMediaFileStorage"
                 and file_id in getattr(o, "_files_by_id", {}))
    return store.get_file(file_id).content


def test_setup_keeps_every_value_across_pages(runs_dir):
    """Start -> Live -> Setup used to reset steps, batch_size and alpha_max to defaults."""
    at = new_app()
    at.text_input(key="f_steps").set_value("77").run()
    at.text_input(key="f_batch_size").set_value("8").run()
    at.text_input(key="f_alpha_max").set_value("0.7").run()
    at.multiselect(key="w_methods").set_value(["vanilla", "dlb", "dynsdpb"]).run()
    at.text_input(key="w_seeds").set_value("0,1").run()
    for page in ("live.py", "compare.py", "runs.py", "learn.py", "live.py"):
        at.switch_page(str(PAGES / page)).run()
        at.run()
        assert not at.exception, [e.value for e in at.exception]
    at.switch_page(str(PAGES / "setup.py")).run()
    assert at.text_input(key="f_steps").value == "77"
    assert at.text_input(key="f_batch_size").value == "8"
    assert at.text_input(key="f_alpha_max").value == "0.7"
    assert at.multiselect(key="w_methods").value == ["vanilla", "dlb", "dynsdpb"]
    assert at.text_input(key="w_seeds").value == "0,1"


def test_saved_experiment_yaml_round_trips_methods_and_seeds(runs_dir, csv):
    """The saved file is the whole experiment: 3 methods x 2 seeds come back as such."""
    from dynsdpb.presets import load_experiment
    at = new_app()
    fill_setup(at, csv, methods=("vanilla", "dlb", "dynsdpb"), steps="7", alpha_max="0.8")
    at.session_state["w_seeds"] = "0,1"
    at.run()
    text = downloaded(at, "btn_save_yaml").decode()
    exp = load_experiment(text, "saved.yaml")
    assert exp.methods == ["vanilla", "dlb", "dynsdpb"] and exp.seeds == [0, 1]
    assert exp.base.steps == 7 and exp.base.alpha_max == 0.8

    # loading it into a fresh form restores everything, methods and seeds included
    at2 = new_app()
    assert at2.session_state["w_methods"] == ["vanilla", "dynsdpb"]

    def load(text: str) -> None:   # AppTest runs this function's source as a script
        import streamlit as st
        import yaml

        from app import forms
        st.session_state["msg"] = forms.load_experiment_yaml(yaml.safe_load(text), "saved.yaml")

    probe = AppTest.from_function(load, args=(text,), default_timeout=30)
    probe.run()
    assert not probe.exception, [e.value for e in probe.exception]
    ss = probe.session_state
    assert ss["msg"] == ("success", "Loaded saved.yaml.")
    assert ss["w_methods"] == ["vanilla", "dlb", "dynsdpb"] and ss["w_seeds"] == "0,1"
    assert ss["f_steps"] == "7" and ss["f_alpha_max"] == "0.8"
    assert ss["w_model_choice"] == "tiny-random-bert"


def test_setup_hides_fields_no_code_reads(runs_dir):
    at = new_app()
    at.session_state["w_methods"] = ["vanilla", "dlb", "dynsdpb"]
    at.run()
    labels = {w.label for w in at.text_input} | {w.label for w in at.selectbox}
    assert "alpha_max" in labels and "top_k" not in labels


def test_the_app_root_opens_setup(runs_dir):
    """Setup is not the default page any more (a default page lives only at "/", so /setup
    showed "Page not found"); the root still opens Setup."""
    at = new_app()
    assert at.title[0].value == "Setup"


def _arm(records, status, method="dynsdpb", **cfg):
    from app import views
    from dynsdpb.store import RunDir
    return views.ArmView(RunDir(f"/nonexistent/{method}-s0"), "exp", "exp",
                      {"method": method, "steps": 60, "val_size": 200, "test_size": 400, **cfg},
                      status, records)


def _steps(n, dt=1.0, eval_every=10, eval_s=5.0, t0=1000.0):
    out, t = [], t0
    for s in range(1, n + 1):
        t += dt + (eval_s if s % eval_every == 0 else 0.0)
        out.append({"step": s, "time": t, "val_accuracy": 0.5 if s % eval_every == 0 else None})
    return out


def test_progress_counts_steps_per_arm_and_says_time_left_in_words():
    from app import progress
    recs = _steps(30)
    arms = [_arm(recs, {"state": "running", "phase": "training", "step": 30, "steps": 60},
                 "vanilla"),
            _arm(recs, {"state": "running", "phase": "training", "step": 30, "steps": 60})]
    info = progress.progress_info(arms, now=recs[-1]["time"])
    words = progress.progress_words(info)
    assert words[0] == "30/60 steps per arm"                      # not 60/120
    # 30 steps at the mean recent interval (29 gaps, 3 of them with a 5 s evaluation), then
    # the test evaluation of each arm in turn: 400/200 x the measured 5 s
    assert info["test_each"] == 10.0
    assert info["left"] == pytest.approx(30 * (26 + 3 * 6) / 29 + 2 * 10.0)
    assert "about 70 s left (incl. ~10 s of testing per arm)" in words
    assert not any(":" in w for w in words)                       # never a clock like 15:24
    assert progress.fmt_left(130) == "about 2 min left"


def test_progress_scales_testing_by_the_split_sizes_the_loader_made():
    """val_size = test_size = 0 means auto: the ETA uses the sizes in status.json."""
    from app import progress
    recs = _steps(30)
    st = {"state": "running", "phase": "training", "step": 30, "steps": 60,
          "data": {"train": 240, "val": 30, "test": 90}}
    arm = _arm(recs, st, "vanilla", val_size=0, test_size=0)
    assert progress.test_seconds(arm) == pytest.approx(5.0 * 90 / 30)
    # before the loader wrote its sizes, the config's (when given) are used
    arm = _arm(recs, {"state": "running", "step": 30, "steps": 60}, "vanilla")
    assert progress.test_seconds(arm) == pytest.approx(5.0 * 400 / 200)


def test_progress_shows_the_phase_and_a_resume():
    from app import progress
    recs = _steps(60)
    now = recs[-1]["time"] + 4
    arms = [_arm(recs, {"state": "running", "phase": "testing", "step": 60, "steps": 60,
                        "updated": now - 4, "resumed_from": 30}, "vanilla"),
            _arm(recs, {"state": "running", "phase": "training", "step": 60, "steps": 60,
                        "resumed_from": 30})]
    info = progress.progress_info(arms, now=now)
    words = progress.progress_words(info)
    assert info["phases"] == {"vanilla-s0": "testing", "dynsdpb-s0": "waiting to test"}
    assert "vanilla-s0 testing, dynsdpb-s0 waiting to test" in words
    assert info["left"] == (10.0 - 4) + 10.0                      # the rest of one, then one
    assert "resumed from the step-30 checkpoint" in words
    # an older run without `phase` and without evaluations yet: say so honestly
    old = [_arm(recs, {"state": "running", "step": 60, "steps": 60}, "vanilla", val_size=0)]
    w = progress.progress_words(progress.progress_info(old, now=now))
    assert "testing…" in w


def test_live_polls_reread_nothing_when_the_run_files_did_not_change(runs_dir, csv):
    from app import views
    exp = runs_dir / train_experiment(runs_dir, csv)
    sig1, arms1 = views.load_arms_live(exp)
    sig2, arms2 = views.load_arms_live(exp)
    assert arms2 is arms1                      # same objects: no file was read again
    with open(exp / "dynsdpb-s0" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 4, "time": time.time(), "loss": 0.5}) + "\n")
    sig3, arms3 = views.load_arms_live(exp)
    assert sig3 != sig1 and arms3 is not arms1
    assert len(next(a for a in arms3 if a.id == "dynsdpb-s0").records) == 4


# ---------------------------------------------------------------------------------------
# Issue #8, the rest: a queued experiment leaves the queue without Stop, the upload guess,
# fields that do not mislead.


def test_runs_page_removes_and_deletes_a_queued_experiment_without_stop(runs_dir, csv):
    from app import common
    from dynsdpb.config import RunConfig
    jm = common.manager()
    cfg = RunConfig(model="tiny-random-bert", dataset=str(csv), steps=400, batch_size=4,
                    val_size=10, test_size=10, max_len=16, eval_every=200, probe_size=8,
                    checkpoint_every=0, save_model=False)
    first = jm.submit(cfg, ["vanilla"], [0], name="training").id
    deadline = time.time() + 60
    while time.time() < deadline and jm.current() != first:
        time.sleep(0.2)
    assert jm.current() == first
    waiting = jm.submit(cfg, ["vanilla"], [0], name="waiting").id
    doomed = jm.submit(cfg, ["vanilla"], [0], name="doomed").id
    assert jm.queue() == [waiting, doomed]
    try:
        at = new_app()
        at.switch_page(str(PAGES / "runs.py")).run()
        # the training one: Delete stays off and says what to do
        at.selectbox(key="w_runs_pick").set_value(first).run()
        delete = at.button(key="btn_runs_delete")
        assert delete.disabled and "press Stop first" in delete.help
        # a queued one leaves the queue with one click, no Stop needed
        at.selectbox(key="w_runs_pick").set_value(waiting).run()
        at.button(key="btn_runs_dequeue").click().run()
        assert not at.exception, [e.value for e in at.exception]
        assert jm.queue() == [doomed]
        st_ = json.loads((runs_dir / waiting / "vanilla-s0" / "status.json").read_text())
        assert st_["state"] == "stopped"
        # another queued one is deleted directly: dequeued first, then its folder goes
        at.selectbox(key="w_runs_pick").set_value(doomed).run()
        delete = at.button(key="btn_runs_delete")
        assert not delete.disabled
        delete.click().run()
        at.button(key="btn_runs_delete_yes").click().run()
        assert not at.exception, [e.value for e in at.exception]
        assert not at.error, [e.value for e in at.error]
        assert jm.queue() == [] and not (runs_dir / doomed).exists()
        assert jm.current() == first and (runs_dir / first).is_dir()
    finally:
        jm.stop(first)
        assert jm.wait_idle(60)


def test_upload_guesses_the_text_column_warns_on_numbers_and_shows_the_classes(runs_dir):
    """A 200-row id,review,sentiment file: text_column was guessed as `id` (integers)."""
    rng = random.Random(1)
    words = ["plot", "acting", "music", "ending", "story", "cast", "pace", "script"]
    lines = ["id,review,sentiment"]
    for i in range(200):
        lab = ("positive", "negative", "neutral")[i % 3 if i < 150 else 0]
        lines.append(f"{1000 + i},the {' '.join(rng.choice(words) for _ in range(8))} "
                     f"was {lab} {i},{lab}")
    data = ("\n".join(lines) + "\n").encode()
    at = new_app()
    at.session_state["w_data_source"] = "upload a file"
    at.session_state["upload"] = {"name": "reviews.csv", "data": data}
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="w_text_column").value == "review"
    assert at.selectbox(key="w_label_column").value == "sentiment"
    assert not [w.value for w in at.warning if "holds numbers" in w.value]
    # the engine's own reading, before Start: classes with their row counts
    shown = next(m.value for m in at.markdown if "Detected classes" in m.value)
    assert "`negative` 50" in shown and "`neutral` 50" in shown and "`positive` 100" in shown

    # choosing the id column as text is allowed (the engine reads it) but warned about
    at.selectbox(key="w_text_column").set_value("id").run()
    warned = [w.value for w in at.warning if "holds numbers" in w.value]
    assert warned and "`id`" in warned[0] and "e.g. `review`" in warned[0]


def _in_page_order(node):
    """Every node of an AppTest tree, depth first in page order."""
    yield node
    children = getattr(node, "children", None) or {}
    for k in sorted(children):
        yield from _in_page_order(children[k])


def test_setup_fields_do_not_mislead(runs_dir):
    at = new_app()
    # the preset picker and Quick demo come first, before section 1
    order = list(_in_page_order(at.main))
    quick = next(i for i, n in enumerate(order) if getattr(n, "key", None) == "btn_quick_demo")
    model = next(i for i, n in enumerate(order)
                 if n.type == "subheader" and "1 · Model" in n.value)
    assert quick < model

    # the dlb arm's schedule list: only what it can use; an old `auto` loads as static
    at.session_state["w_methods"] = ["vanilla", "dlb", "dynsdpb"]
    at.session_state["f_schedule"] = "auto"
    at.run()
    sched = at.selectbox(key="f_schedule")
    assert sched.options == ["static", "warmup", "linear"] and sched.value == "static"
    assert not at.error, [e.value for e in at.error]

    # the two warm-ups cannot be taken for each other
    lr = at.text_input(key="f_warmup_ratio")
    assert lr.label.startswith("lr warm-up") and "not the dlb" in lr.help
    assert not [t for t in at.text_input if t.key == "f_warmup_alpha_steps"]
    sched.set_value("warmup").run()
    steps = at.text_input(key="f_warmup_alpha_steps")
    assert steps.label.startswith("alpha warm-up steps") and "not the learning-rate" in steps.help
    assert any("first 50 steps" in c.value for c in at.caption)     # the dlb formula

    # an invalid value is never echoed into (or silently replaced in) the formula text
    at.text_input(key="f_alpha_max").set_value("abc").run()
    at.text_input(key="f_tau").set_value("-2").run()
    formulas = [c.value for c in at.caption if "DLB" in c.value or "DynSDPB" in c.value]
    assert not formulas, formulas
    notes = [w.value for w in at.warning if w.value.startswith("Formula shown once")]
    assert any("**alpha_max** is fixed: `abc`" in n for n in notes), notes
    assert any("**tau** is fixed: `-2" in n and "> 0" in n for n in notes), notes
    assert at.button(key="btn_start").disabled


def test_learn_page_shows_where_the_gain_comes_from(runs_dir):
    """Learn §5 draws the shipped verdict (assets/results/distillation-regime.json): one bar per
    paired part with its 95% interval, the numbers of its summary, grey where it contains 0."""
    import json

    from app import gain
    from dynsdpb.paths import ASSETS
    shipped = json.loads((ASSETS / "results" / "distillation-regime.json").read_text())
    at = new_app()
    at.switch_page(str(PAGES / "learn.py")).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Where the gain comes from" in h.value for h in at.header)
    fig = next(json.loads(c.proto.spec) for c in at.get("plotly_chart")
               if "seeds" in (json.loads(c.proto.spec)["layout"].get("title") or {}).get("text", ""))
    bar = fig["data"][0]
    rows = gain.rows(shipped["summary"])
    assert sorted(bar["y"]) == sorted(r["part"] for r in rows)
    for r in rows:
        assert bar["x"][bar["y"].index(r["part"])] == pytest.approx(r["mean"])
    assert "5 seeds, 400 test items" in fig["layout"]["title"]["text"]
    assert any(shipped["command"] in c.value for c in at.caption)
