"""Setup: pick a model, a dataset and the methods to compare; set the hyperparameters; Start.

The form is generated from the engine's RunConfig fields (labels, help texts, choices). Every
value is checked with the engine's own `validate`, for every chosen method, on every rerun:
problems show under their field with what to change, and Start stays off until none are left.
The form's state, checks and field widgets live in app/setup/form.py, the data source and
column mapping in app/setup/data.py, the sweep in app/setup/sweep.py.
"""
from __future__ import annotations

import streamlit as st

from app import common, forms
from app.setup import data as setup_data
from app.setup import form as setup_form
from app.setup import sweep as setup_sweep
from app.forms import OTHER_MODEL
from dynsdpb import config as C
from dynsdpb.errors import ConfigError
from dynsdpb.catalog import BUILTIN_MODELS
from dynsdpb.presets import dump_experiment

ss = st.session_state

# Widget state: defaults once, then whatever the user (or a loaded YAML / relaunch) set.
setup_form.init_state()

st.title("Setup")
st.caption("Choose a model and a dataset, the methods to train side by side, and the settings. "
           "Every method gets the same seed, data order, optimizer and steps: only the loss "
           "differs.")

if ss.get("setup_msg"):   # e.g. "Loaded the config of <experiment>" from Runs' Relaunch
    st.success(ss.pop("setup_msg"), icon=":material/replay:")

with st.expander("Load or save a config (YAML)"):
    st.file_uploader("Load a config file", type=["yaml", "yml", "json"], key="yaml_widget",
                     on_change=setup_form.on_yaml,
                     help="A file saved here or by `dynsdpb train --dump`.")
    if ss.get("yaml_msg"):
        kind, msg = ss["yaml_msg"]
        getattr(st, kind)(msg)
    save_slot = st.empty()

family, builtins, datasets = setup_data.offered_datasets()

# Collect the values and check them (before drawing, so problems sit under their fields)
setup_data.guess_mapping()
cfg, problems, methods, seeds, data_warnings, decoder = setup_form.collect()
form = setup_form.Form(problems, decoder, cfg.to_dict())
show_problems, field, grid = form.show_problems, form.field, form.grid

setup_form.draw_presets(decoder)

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
setup_data.draw_source(form, family, builtins, datasets)
setup_data.draw_mapping(form, cfg, data_warnings)
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

if not decoder:
    st.caption("Views (every arm, vanilla too): each training forward of a sample sees its own "
               "augmented view, so a carried sample's second pass sees another view than the "
               "one its soft target came from: the second augmented image of self-distillation on "
               "images, for text (Learn §5).")
    grid(["augment", "augment_p"], 4)

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
        hot = [m for m in methods if m in ("dlb", "dynsdpb")
               and C.topk_temperature_warning(cfg.replace(method=m))]
        if hot and not problems.get("top_k"):
            st.warning(f"{', '.join(hot)}: " + C.topk_temperature_warning(
                cfg.replace(method=hot[0])) + ". kd_cache = full keeps everything, at 2 bytes "
                "x vocabulary per target token.", icon=":material/warning:")

# -- optimisation and bookkeeping ----------------------------------------------------------
st.subheader("4 · Training")
st.caption("Optimisation, the same for every arm: AdamW with a learning rate that warms up "
           "over the first `lr warm-up share` of the steps, then decays linearly to 0.")
grid(["steps", "batch_size", "lr", "weight_decay", "warmup_ratio", "grad_clip"])
with st.expander("Evaluation, checkpoints, device", expanded=any(problems.get(n) for n in (
        "eval_every", "eval_on_start", "probe_size", "checkpoint_every", "save_model",
        "device"))):
    grid(["eval_every", "probe_size", "checkpoint_every", "device", "save_model",
          "eval_on_start"])

# -- problems not shown yet (hidden fields) and Start ---------------------------------------
st.divider()
for p in form.unshown():
    st.error(setup_form.problem_text(p), icon=":material/warning:")
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

setup_sweep.draw_sweep(cfg, methods, seeds, n_problems)

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
        upload = setup_data.upload_for_start(decoder)
        try:
            job = jm.submit(cfg, methods, seeds, name=str(ss["w_exp_name"]).strip(), upload=upload)
        except ConfigError as e:
            for p in e.problems:
                st.error(setup_form.problem_text(p), icon=":material/warning:")
        else:
            ss["live_exp"] = job.id
            st.switch_page(common.ROOT / "pages" / "live.py")
