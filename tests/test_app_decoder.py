"""The app with decoder (causal LM) runs, through AppTest (no browser): Setup shows the decoder
fields and hides the encoders' ones, validate's messages sit under their fields, a decoder
file gets a prompt/target/answer mapping; Live shows the sample generations and one carried
sample's tokens coloured by alpha (or KD); Compare leads with exact match and perplexity;
Runs browses the stored generations.

The runs are real: a tiny random Llama and a word-level tokenizer saved to a folder
(tests/lm_tiny.py), trained for a few steps by the engine. Nothing touches the network.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from tests.lm_tiny import tiny_decoder_files

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
MAIN = str(ROOT / "app" / "main.py")
PAGES = ROOT / "pages"


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    d = tmp_path / "runs"
    monkeypatch.setenv("DYNSDPB_RUNS_DIR", str(d))
    st.cache_resource.clear()
    yield d
    st.cache_resource.clear()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model folder, arith.jsonl) for a decoder run."""
    return tiny_decoder_files(tmp_path_factory.mktemp("tiny-decoder"), 40)


def decoder_config(model: str, data: str, **kw):
    from dynsdpb.config import RunConfig
    base = dict(model=model, dataset=data, max_len=32, val_size=4, test_size=4,
                max_train_samples=0, batch_size=4, steps=4, eval_every=2, lr=1e-2, top_k=8,
                lora_target_modules="q_proj,v_proj", eval_generations=3, max_new_tokens=4,
                probe_size=4, checkpoint_every=0, save_model=False, device="cpu")
    base.update(kw)
    return RunConfig(**base)


def run_decoder(runs: Path, model: str, data: str, methods=("vanilla", "dynsdpb")) -> Path:
    """A finished decoder experiment in the runs directory (the engine, in this process)."""
    from dynsdpb.experiment import create_experiment, run_experiment
    exp = create_experiment(runs, decoder_config(model, data), list(methods), [0])
    out = run_experiment(exp)
    assert set(out["states"].values()) == {"finished"}, out
    return exp


def new_app() -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def open_page(at: AppTest, page: str) -> AppTest:
    at.switch_page(str(PAGES / page)).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def widget_labels(at: AppTest) -> set[str]:
    return ({w.label for w in at.text_input} | {w.label for w in at.selectbox}
            | {w.label for w in at.checkbox})


def leaves(node) -> list:
    """The page's elements in document order (blocks flattened)."""
    kids = getattr(node, "children", None)
    if kids is None:
        return [node]
    out = []
    for k in sorted(kids):
        out += leaves(kids[k])
    return out


def htmls(at: AppTest) -> list[str]:
    return [h.proto.body for h in at.get("html")]


# ---------------------------------------------------------------------------------------
# Setup


def test_setup_decoder_shows_lora_fields_and_hides_encoder_fields(runs_dir):
    from dynsdpb.catalog import GENERATION_DATASETS as BUILTIN_LM_DATASETS
    at = new_app()
    enc = widget_labels(at)
    assert "lora_r" not in enc and "finetune" not in enc and "max_new_tokens" not in enc

    at.session_state["w_model_choice"] = "smollm2-135m"
    at.run()
    assert not at.exception
    dec = widget_labels(at)
    for f in ("finetune", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules",
              "save_format", "kd_cache", "top_k", "max_new_tokens", "eval_generations"):
        assert f in dec, f
    # the dataset picker offers the engine's generation datasets, and picked one
    ds = at.selectbox(key="w_data_builtin")
    assert ds.options == [f"{n} (generation)" for n in BUILTIN_LM_DATASETS]
    assert ds.value == "arith-easy"
    assert not at.error, [e.value for e in at.error]

    # full fine-tuning has no adapter: the LoRA settings go
    at.selectbox(key="f_finetune").set_value("full").run()
    full = widget_labels(at)
    assert "lora_r" not in full and "save_format" not in full and "finetune" in full

    # a decoder file: prompt/target/answer columns, never text/label columns
    at.session_state["w_data_source"] = "local file path or hub id"
    at.session_state["w_data_path"] = str(write_qa_csv(runs_dir.parent / "qa.csv"))
    at.run()
    labels = widget_labels(at)
    assert {"prompt column", "target column", "answer column"} <= labels
    assert not {"text_column", "label_column", "text_pair_column"} & labels

    # back to an encoder: the decoder fields leave, the classification datasets come back
    at.session_state["w_model_choice"] = "tiny-random-bert"
    at.session_state["w_data_source"] = "built-in"
    at.run()
    back = widget_labels(at)
    assert "finetune" not in back and "kd_cache" not in back
    assert at.selectbox(key="w_data_builtin").value == "tweets-sentiment"


def test_setup_tau_fields_follow_the_model_family_unless_typed(runs_dir):
    at = new_app()
    taus = ("tau", "tau_0", "tau_min", "tau_max")
    assert [float(at.session_state[f"f_{k}"]) for k in taus] == [3.0, 3.0, 1.0, 6.0]
    at.session_state["w_model_choice"] = "smollm2-135m"
    at.session_state["w_methods"] = ["vanilla", "dlb", "dynsdpb"]
    at.run()
    assert not at.exception
    assert [float(at.session_state[f"f_{k}"]) for k in taus] == [1.0, 1.0, 1.0, 1.5]
    assert not [w for w in at.warning if "top-k" in w.value]
    # a typed tau above 1.5 stays, and Setup warns that the top-k cache cannot carry it
    at.session_state["f_tau_max"] = "4"
    at.run()
    assert float(at.session_state["f_tau_max"]) == 4.0
    assert any("kd_cache full" in w.value for w in at.warning)
    # back to an encoder with the decoder defaults untouched: the encoder's come back
    at.session_state["f_tau_max"] = "1.5"
    at.session_state["w_model_choice"] = "tiny-random-bert"
    at.run()
    assert [float(at.session_state[f"f_{k}"]) for k in taus] == [3.0, 3.0, 1.0, 6.0]


def test_decoder_validate_errors_show_under_their_fields(runs_dir):
    at = new_app()
    at.session_state["w_model_choice"] = "smollm2-135m"
    at.run()
    at.text_input(key="f_lora_r").set_value("0").run()
    at.text_input(key="f_max_new_tokens").set_value("0").run()
    errors = [e.value for e in at.error]
    assert any(e.startswith("**lora_r** = `0`") and "rank must be at least 1" in e
               for e in errors), errors
    assert at.button(key="btn_start").disabled
    # each message is drawn right under its field's widget
    seq = leaves(at.main)
    for key, field in (("f_lora_r", "lora_r"), ("f_max_new_tokens", "max_new_tokens")):
        i = next(n for n, el in enumerate(seq) if getattr(el, "key", None) == key)
        nxt = seq[i + 1]
        assert nxt.type == "error" and nxt.value.startswith(f"**{field}**"), nxt
    # fixing it clears the message and Start comes back
    at.text_input(key="f_lora_r").set_value("4").run()
    at.text_input(key="f_max_new_tokens").set_value("8").run()
    assert not at.error, [e.value for e in at.error]
    assert not at.button(key="btn_start").disabled


def write_qa_csv(path: Path, n: int = 40) -> Path:
    rng = random.Random(1)
    lines = ["question,solution,final"]
    for _ in range(n):
        a, b = rng.randrange(10), rng.randrange(10)
        lines.append(f"what is {a} plus {b},the answer is {a + b},{a + b}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_decoder_upload_maps_prompt_target_answer(runs_dir, tiny):
    from app import forms
    model, _ = tiny
    at = new_app()
    at.session_state["w_model_choice"] = forms.OTHER_MODEL
    at.session_state["w_model_other"] = model
    at.session_state["w_data_source"] = forms.DATA_UPLOAD
    data = write_qa_csv(runs_dir.parent / "qa.csv").read_bytes()
    at.session_state["upload"] = {"name": "qa.csv", "data": data}
    for k, v in {"val_size": "4", "test_size": "4", "max_len": "32"}.items():
        at.session_state["f_" + k] = v
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    # guessed from the column names
    assert at.selectbox(key="w_lm_prompt").value == "question"
    assert at.selectbox(key="w_lm_target").value == "solution"
    assert at.selectbox(key="w_lm_answer").value == "final"
    assert not at.error, [e.value for e in at.error]
    # the same column twice is refused under the target picker
    at.selectbox(key="w_lm_target").set_value("question").run()
    errs = [e.value for e in at.error]
    assert any(e.startswith("**target**") and "must differ from the prompt" in e
               for e in errs), errs
    at.selectbox(key="w_lm_target").set_value("solution").run()
    assert not at.error
    # what the run gets: the engine's column names
    rows = [json.loads(x) for x in forms.mapped_jsonl(
        [{"question": "q", "solution": "s", "final": "1"}],
        {"prompt": "question", "target": "solution", "answer": "final"}).splitlines()]
    assert rows == [{"prompt": "q", "target": "s", "answer": "1"}]


# ---------------------------------------------------------------------------------------
# Live, Compare, Runs on a real decoder experiment


def test_live_shows_generations_and_coloured_tokens(runs_dir, tiny):
    from dynsdpb.records import axis_title
    from dynsdpb.store import RunDir
    from tests.test_app import specs
    exp = run_decoder(runs_dir, *tiny)
    at = open_page(new_app(), "live.py")

    # the validation chart is exact match, in %
    val = specs(at)[0]
    assert "exact match" in val["layout"]["title"]["text"]
    assert val["layout"]["yaxis"]["title"]["text"] == axis_title("val_exact_match")
    assert axis_title("val_exact_match").endswith("(%)")
    assert sum(len(t["y"]) for t in val["data"]) == 2 * 2     # 2 arms x evaluations at 2, 4
    # strict next to flexible, and the cached top-k mass of the distilling arm per step
    titled = [sp for sp in specs(at) if "title" in sp["layout"]]
    assert any("strict" in sp["layout"]["title"]["text"] for sp in titled)
    mass = next(sp for sp in titled if "top-k mass" in sp["layout"]["title"]["text"])
    assert len(mass["data"]) == 1 and all(0 < y <= 100.01 for y in mass["data"][0]["y"])

    # the latest generations of both arms: 3 prompts x 2 arms; answers named as everywhere
    gen = next(d.value for d in at.dataframe if "generation" in d.value.columns)
    assert list(gen.columns) == ["prompt (end)", "run", "step", "model's answer",
                                 "gold answer", "correct", "strict", "cut off", "generation"]
    assert set(gen["strict"]) <= {"✓", "✗"}
    assert len(gen) == 3 * 2 and set(gen["run"]) == {"vanilla-s0", "dynsdpb-s0"}
    assert set(gen["step"]) == {4} and set(gen["correct"]) <= {"✓", "✗"}
    assert gen["prompt (end)"].iloc[0] == gen["prompt (end)"].iloc[1]   # one prompt, both arms
    # the prompt's end, where its numbers are, is shown (a long prompt was cut before them)
    from app import samples as app_samples
    stored = {" ".join(json.loads(ln)["prompt"].split()) for ln in
              (exp / "vanilla-s0" / "samples.jsonl").read_text().splitlines()}
    assert set(gen["prompt (end)"]) <= stored
    long = "State the final answer to the following question as a number. " * 3 + \
        "Question: what is 7 plus 8?"
    assert app_samples.prompt_tail(long).startswith("…")
    assert app_samples.prompt_tail(long).endswith("Question: what is 7 plus 8?")
    # a generation that used all max_new_tokens (4 here) is marked as cut off
    assert set(gen["cut off"]) == {"✂ cut off"}
    assert any("every arm at step 4" in c.value for c in at.caption)

    # the carried sample's tokens: one span per target token, coloured by the per-token KD
    # term by default, after its prompt in grey
    view = RunDir(exp / "dynsdpb-s0").tokens()[-1]
    body = next(h for h in htmls(at) if "dyn-tok" in h)
    assert body.count("class='dyn-tok'") == len(view["tokens"])
    assert "dynsdpb-s0: step 4" in body
    assert view["prompt"] and "class='dyn-prompt'" in body
    assert body.index("dyn-prompt") < body.index("dyn-tok")
    assert any("KD term (nats)" in h for h in htmls(at))         # the legend
    at.segmented_control(key="w_live_tok_show").set_value("alpha").run()
    assert any("alpha (KD weight)" in h for h in htmls(at))
    # one alpha per sequence here (granularity sample): said, not left to guess
    assert any("alpha is one per sequence in dynsdpb-s0" in c.value for c in at.caption)


def test_token_text_is_escaped_and_new_token_views_are_picked_up(runs_dir, tiny):
    """tokens.jsonl is part of the Live page's stat signature: a new line is read on the next
    poll (and only then); a token is shown as text, never as HTML or Markdown."""
    from app import views
    exp = run_decoder(runs_dir, *tiny, methods=("dynsdpb",))
    sig1, arms1 = views.load_arms_live(exp)
    assert views.load_arms_live(exp)[1] is arms1
    evil = {"step": 5, "sample": 0, "tokens": ["<img src=x onerror=alert(1)>", "**b**", " $x$"],
            "token_ids": [1, 2, 3], "alpha": [0.5, None, 1.0], "kd": [0.1, None, 0.2]}
    with open(exp / "dynsdpb-s0" / "tokens.jsonl", "a") as f:
        f.write(json.dumps(evil) + "\n")
    sig2, arms2 = views.load_arms_live(exp)
    assert sig2 != sig1 and arms2[0].tokens[-1]["step"] == 5

    at = open_page(new_app(), "live.py")
    body = next(h for h in htmls(at) if "dyn-tok" in h)
    assert "<img" not in body and "**b**" not in body and "$x$" not in body
    assert "&#60;img" in body and "&#42;&#42;b&#42;&#42;" in body
    assert "&middot;&#36;x&#36;" in body                  # the leading space shown as ·
    assert "background:#e6e6e6" in body                   # no teacher: grey


def test_compare_and_runs_show_exact_match_perplexity_and_generations(runs_dir, tiny):
    exp = run_decoder(runs_dir, *tiny)
    at = open_page(new_app(), "compare.py")
    assert at.multiselect(key="w_cmp_metrics").value[:2] == ["val_exact_match",
                                                              "val_perplexity"]
    tables = [d.value for d in at.dataframe]
    main = next(t for t in tables if "method" in t.columns and "seeds" in t.columns
                and "schedule" in t.columns)
    assert "Test exact match (%)" in main.columns
    dec = next(t for t in tables if "perplexity" in t.columns)
    assert list(dec["method"]) == ["vanilla", "dynsdpb"]
    assert all(float(v) > 1 for v in dec["perplexity"])      # exp(CE) of a random model

    at = open_page(at, "runs.py")
    arms = next(d.value for d in at.dataframe if "model saved" in d.value.columns)
    assert "test" in arms.columns and arms["test"].str.contains("exact_match").all()
    gens = [d.value for d in at.dataframe if "generation" in d.value.columns]
    assert gens and len(gens[0]) == 3
    # browse an earlier evaluation
    at.select_slider(key="w_runs_gen_step").set_value(2).run()
    assert not at.exception
    assert any("at step 2" in c.value for c in at.caption)
    assert exp.name in [e for e in at.selectbox(key="w_runs_pick").options]
