"""Experiment YAML (dynsdpb/presets.py) and the presets shipped in assets/presets/."""
import pytest

from dynsdpb import config as C
from dynsdpb.errors import ConfigError
from dynsdpb.presets import (dump_experiment, list_presets, load_experiment, load_preset,
                             presets_dir)


def test_round_trip_keeps_every_field():
    base = C.RunConfig(lr=1e-4, alpha_max=2.0, budget="compute", save_model=False,
                       text_pair_column="b", name="mine")
    text = dump_experiment(base, ["vanilla", "dlb"], [3, 4], description="a test")
    e = load_experiment(text, "t.yaml")
    assert (e.methods, e.seeds, e.name, e.description) == (["vanilla", "dlb"], [3, 4], "mine",
                                                           "a test")
    # the base carries the last distilling method and the first seed, everything else as given
    assert e.base == base.replace(method="dlb", seed=3)
    assert dump_experiment(e.base, e.methods, e.seeds, e.name, e.description) == text
    # the fields that differ from the defaults are written at top level, and only those
    top = {line.split(":")[0] for line in text.splitlines() if line and line[0].isalpha()}
    assert top == {"lr", "alpha_max", "budget", "save_model", "text_pair_column", "name",
                   "methods", "seeds", "description"}


def test_old_single_run_yaml_is_one_arm():
    e = load_experiment(C.dumps(C.RunConfig(method="dlb", seed=7, steps=9)), "old.yaml")
    assert e.methods == ["dlb"] and e.seeds == [7] and e.base.steps == 9


@pytest.mark.parametrize("text,field,fix", [
    ("methods: [vanilla, sgd]\n", "methods", "vanilla, refeed, dlb, dynsdpb"),
    ("methods: [dlb, dlb]\n", "methods", "once"),
    ("seeds: [0, 0]\n", "seeds", "once"),
    ("seeds: [0, x]\n", "seeds", "whole numbers"),
    ("seeds: {a: 1}\n", "seeds", "give a list"),
    ("seeds: [-1]\n", "seed", ">= 0"),
    ("lrr: 1\n", "lrr", "unknown field"),
    ("methods: [vanilla]\nmethod: dlb\n", "method", "not in methods"),
    ("seeds: [1, 2]\nseed: 0\n", "seed", "not in seeds"),
    ("methods: [vanilla, dlb]\nbatch_size: 7\n", "batch_size", "even"),   # checked per arm
    ("name: [1]\n", "name", "use text"),
    ("- 1\n", "config.yaml", "must be a mapping"),
    ("lr: [1, 2\n", "config", "not valid YAML"),
    ("lr: !!python/object/apply:os.system ['touch pwned']\n", "config", "not valid YAML"),
])
def test_bad_experiment_names_the_field(text, field, fix, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as ei:
        load_experiment(text, "config.yaml")
    assert any(p.field == field and fix in p.fix for p in ei.value.problems), str(ei.value)
    assert not (tmp_path / "pwned").exists()


def test_presets_ship_and_load():
    names = list_presets()
    assert names[0] == "quick-demo"
    assert set(names) == {"quick-demo", "classroom", "paper-equal-epochs", "equal-compute",
                          "distillation-regime",
                          "warmup-ablation", "decoder-quick-demo"}
    # classroom: a dataset and lr where the model becomes sure within the run (issue 11)
    c = load_preset("classroom")
    assert (c.base.dataset, c.base.lr, c.base.steps, c.methods) == (
        "bbc-news", 2e-4, 40, ["vanilla", "dynsdpb"])
    assert load_preset("quick-demo").description.startswith("Quick check")
    for n in names:
        e = load_preset(n)
        assert e.description and "\n" not in e.description.strip()
    q = load_preset("quick-demo")
    assert (q.base.model, q.base.dataset, q.methods, q.seeds) == (
        "minilm-l6", "tweets-sentiment", ["vanilla", "dynsdpb"], [0])
    assert (q.base.steps, q.base.eval_every, q.base.max_len, q.base.max_train_samples,
            q.base.val_size, q.base.test_size, q.base.checkpoint_every) == (60, 10, 48, 2000,
                                                                             200, 400, 30)
    assert load_preset("paper-equal-epochs").base.budget == "epochs"
    assert len(load_preset("paper-equal-epochs").seeds) == 3
    assert load_preset("equal-compute").base.budget == "compute"
    w = load_preset("warmup-ablation")
    assert w.base.schedule == "warmup" and set(w.methods) == {"vanilla", "dlb", "dynsdpb"}
    with pytest.raises(ConfigError, match="quick-demo"):
        load_preset("nope")


def test_preset_files_hold_only_what_differs_from_the_defaults():
    """A preset says what it changes: every field it names has a value other than the default,
    and it loads to the experiment scripts/make_presets.py describes."""
    import yaml

    from scripts.make_presets import PRESETS
    defaults = C.RunConfig().to_dict()
    for p in presets_dir().glob("*.yaml"):
        d = yaml.safe_load(p.read_text())
        fields = set(d) - {"name", "description", "methods", "seeds"}
        assert fields <= set(C.FIELDS)
        same = sorted(f for f in fields if d[f] == defaults[f])
        assert same == [], f"{p.name} repeats defaults {same}; run scripts/make_presets.py"
        desc, methods, seeds, over = PRESETS[p.stem]
        e = load_preset(p.stem)
        assert e.base.replace(method="vanilla", seed=0) == C.RunConfig(**over).replace(
            method="vanilla", seed=0)
        assert (e.methods, e.seeds, e.description) == (methods, seeds, desc)


def test_a_full_experiment_file_of_earlier_versions_still_loads():
    import yaml
    base = C.RunConfig(steps=7, lr=3e-4, augment="token-mask")
    full = {"methods": ["vanilla", "dlb"], "seeds": [1, 2],
            **{k: v for k, v in base.to_dict().items() if k not in ("method", "seed", "name")}}
    e = load_experiment(yaml.safe_dump(full, sort_keys=False))
    short = dump_experiment(base, ["vanilla", "dlb"], [1, 2])
    assert "\nsteps: 7" in short and "\nbatch_size:" not in short   # only what differs
    assert load_experiment(short) == e


def test_setup_page_preset_picker_fills_the_form(tmp_path, monkeypatch):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from dynsdpb.paths import APP_MAIN
    monkeypatch.setenv("DYNSDPB_RUNS_DIR", str(tmp_path / "runs"))
    st.cache_resource.clear()
    try:
        at = AppTest.from_file(str(APP_MAIN), default_timeout=60).run()
        assert not at.exception, [e.value for e in at.exception]
        assert at.selectbox(key="w_preset").options[0].startswith("quick-demo: ")
        # on first load nothing is picked (the form holds the defaults, not quick-demo's)
        assert at.selectbox(key="w_preset").value is None
        assert at.button(key="btn_load_preset").disabled
        at.selectbox(key="w_preset").set_value("warmup-ablation").run()
        at.button(key="btn_load_preset").click().run()
        assert not at.exception, [e.value for e in at.exception]
        ss = at.session_state
        w = load_preset("warmup-ablation")
        assert (ss["f_schedule"], str(ss["f_warmup_alpha_steps"]), str(ss["f_steps"])) == (
            "warmup", str(w.base.warmup_alpha_steps), str(w.base.steps))
        assert ss["w_methods"] == w.methods and ss["w_seeds"] == "0,1,2"
        assert any("Preset warmup-ablation loaded" in c.value for c in at.caption)
        assert not at.button(key="btn_start").disabled
    finally:
        st.cache_resource.clear()
