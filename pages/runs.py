"""Runs: the history in the runs directory (it survives app restarts).

Filter, rename (a display name in experiment.json; folders never move), delete with a
confirmation, relaunch from a run's config, resume stopped or interrupted runs, and download
the fine-tuned model folder.
"""
from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path

import streamlit as st

from app import common, downloads, forms, samples, tables, views
from dynsdpb import config as C
from dynsdpb.errors import ConfigError
from dynsdpb.store import ExperimentDir, delete_run_or_experiment, inside

ss = st.session_state
jm = common.manager()

st.title("Runs")


def sweeps() -> bool:
    """Sweep folders (dynsdpb/sweep/read.py) in the runs directory: progress, stop, delete. Their
    heatmaps and reports are on Compare. Returns whether there are any."""
    from dynsdpb.sweep import read as SR
    found = SR.find_sweeps(jm.runs_dir)
    if not found:
        return False
    ovs = {p.name: SR.overview(p) for p in found}
    with st.expander(f"Sweeps ({len(found)}): heatmaps and reports are on Compare"):
        st.dataframe([{
            "sweep": o["name"], "kind": o["kind"], "varies": ", ".join(o["axes"]),
            "methods": ", ".join(o["methods"]), "seeds": len(o["seeds"]),
            "runs finished": (f"{o['runs_finished']} of {o['runs_total']}"
                              if o["runs_total"] is not None else str(o["runs_finished"])),
            "running": o["runs_running"], "queued": o["runs_queued"], "failed": o["runs_failed"],
            "created": datetime.fromtimestamp(o["created"]).strftime("%Y-%m-%d %H:%M"),
            "folder": o["folder"]} for o in ovs.values()], hide_index=True, width="stretch")
        pick = st.selectbox("sweep", list(ovs), key="w_runs_sweep")
        o = ovs[pick]
        mine = [k for k in jm.queue() if k in o["keys"]]
        busy = o["runs_running"] > 0 or bool(mine) or o["runs_queued"] > 0
        c1, c2, _ = st.columns([1, 1, 3])
        if c1.button("Stop its queued runs", key="btn_sweep_stop", disabled=not mine,
                     help="Takes this sweep's runs off the queue (a run already training "
                          "finishes its step and stops with Stop on Live)."):
            for k in mine:
                jm.stop(k)
            ss["flash"] = f"Took {len(mine)} runs of {o['name']} off the queue."
            st.rerun()
        if c2.button("Delete…", key="btn_sweep_delete", disabled=busy,
                     help="A run of it is training or queued: stop those first." if busy
                     else "Asks for confirmation."):
            ss["confirm_sweep_delete"] = pick
        if ss.get("confirm_sweep_delete") == pick:
            st.warning(f"Delete the sweep **{o['name']}** and its {o['runs_finished']} "
                       f"finished runs (`{jm.runs_dir / pick}`)? This cannot be undone.")
            d1, d2, _ = st.columns([1, 1, 4])
            if d1.button("Yes, delete", type="primary", key="btn_sweep_delete_yes"):
                ss.pop("confirm_sweep_delete", None)
                delete_run_or_experiment(jm.runs_dir, jm.runs_dir / pick)
                ss["flash"] = f"Deleted the sweep {o['name']}."
                st.rerun()
            if d2.button("Cancel", key="btn_sweep_delete_no"):
                ss.pop("confirm_sweep_delete", None)
                st.rerun()
    return True


def loops() -> bool:
    """Self-training loops (their rounds are experiments inside the loop's folder): state,
    round and phase, a way to the Self-training page. Returns whether there are any."""
    from dynsdpb.selftrain.store import META
    from dynsdpb.store import RunDir, read_json
    found = sorted((p.parent for p in jm.runs_dir.glob(f"*/{META}")),
                   key=lambda p: (read_json(p / META, {}) or {}).get("created", 0),
                   reverse=True)
    if not found:
        return False
    rows = []
    for d in found:
        meta = read_json(d / META, {}) or {}
        stt = RunDir(d).status()
        loop = meta.get("loop") or {}
        rows.append({
            "loop": meta.get("name") or d.name, "state": stt.get("state", "?"),
            "round": f"{stt.get('round', '?')}/{stt.get('rounds', loop.get('rounds', '?'))}",
            "phase": stt.get("phase", ""), "kind": loop.get("loop", ""),
            "methods": ", ".join(meta.get("methods") or []),
            "seeds": len(meta.get("seeds") or []),
            "created": datetime.fromtimestamp(meta.get("created", 0)).strftime(
                "%Y-%m-%d %H:%M"), "folder": d.name})
    with st.expander(f"Self-training loops ({len(found)}): rounds, kept traces and answers "
                     "are on Self-training; each round's runs are on Live and Compare"):
        st.dataframe(rows, hide_index=True, width="stretch")
        pick = st.selectbox("loop", [d.name for d in found], key="w_runs_loop",
                            format_func=lambda n: next(r["loop"] for r in rows
                                                       if r["folder"] == n))
        if st.button("Open on Self-training", key="btn_runs_loop_open",
                     icon=":material/autorenew:"):
            ss["w_st_pick"] = pick
            st.switch_page(common.ROOT / "pages" / "selftrain.py")
    return True


any_sweeps = sweeps()
any_loops = loops()
exps = views.experiments()
if not exps:
    st.info(f"No experiments in `{jm.runs_dir}`" + (" outside sweeps and loops" if
            any_sweeps or any_loops else "") + " yet. Start one on the Setup page.")
    st.stop()

# -- overview with filters -------------------------------------------------------------------
ss.setdefault("w_runs_filter", "")
ss.setdefault("w_runs_states", [])
c1, c2 = st.columns([2, 2])
with c1:
    text = st.text_input("filter", key="w_runs_filter", persist_state="session",
                         placeholder="name, dataset, model, method",
                         help="Shows experiments whose name, folder, dataset, model or methods "
                              "contain this text.")
with c2:
    states = st.multiselect("state", ["running", "queued", "finished", "stopped", "failed",
                                      "interrupted"], key="w_runs_states", persist_state="session")

rows, shown = [], []
for exp in exps:
    meta = views.exp_meta(exp)
    arms = views.load_arms(exp, with_records=False)
    st_ = views.exp_state([a.state for a in arms])
    base = meta.get("base_config", {})
    hay = " ".join(map(str, [exp.name, meta.get("name", ""), base.get("dataset", ""),
                             base.get("model", ""), *meta.get("methods", [])])).lower()
    if text and text.lower() not in hay:
        continue
    if states and st_ not in states:
        continue
    best = {}
    for a in arms:
        s = a.rd.summary()
        pm = s.get("primary_metric")
        if pm and s.get(f"test_{pm}") is not None:
            best.setdefault(a.method, []).append(s[f"test_{pm}"])
    pm = next((a.rd.summary().get("primary_metric") for a in arms if a.rd.summary()), "")
    res = "  ".join(f"{m}: {tables.result_text(pm, sum(v) / len(v))}"
                    for m, v in best.items()) or "—"
    shown.append(exp)
    rows.append({
        "name": views.exp_name(exp, meta), "state": st_,
        "created": datetime.fromtimestamp(meta.get("created", 0)).strftime("%Y-%m-%d %H:%M"),
        "model": base.get("model", ""), "dataset": str(base.get("dataset", "")).split("/")[-1],
        "runs": ", ".join(a.id for a in arms),
        "steps": "—" if base.get("steps") is None else str(base.get("steps")),
        "test result (mean)": res, "folder": exp.name,
    })
st.dataframe(rows, hide_index=True, width="stretch")
st.caption(f"{len(rows)} of {len(exps)} experiments · runs directory `{jm.runs_dir}`")
if not shown:
    st.stop()

# -- one experiment --------------------------------------------------------------------------
ids = [e.name for e in shown]
if ss.get("w_runs_pick") not in ids:
    ss["w_runs_pick"] = ids[0]
names = {e.name: views.exp_name(e) for e in shown}
exp_id = st.selectbox("experiment", ids, key="w_runs_pick", persist_state="session",
                      format_func=lambda i: f"{names[i]}  ({i})" if names[i] != i else i)
exp = jm.runs_dir / exp_id
meta = views.exp_meta(exp)
arms = views.load_arms(exp, with_records=False)
state = views.exp_state([a.state for a in arms])
# A queued experiment has no process yet: it can leave the queue (or be deleted) at once.
# Only one that is training needs Stop first (it finishes its step and saves).
queued = exp_id in jm.queue()
training = jm.current() == exp_id or (state == "running" and not queued)
active = training or queued or state in ("running", "queued")

arm_rows = []
for a in arms:
    s = a.rd.summary()
    pm = s.get("primary_metric")
    arm_rows.append({
        "run": a.id, "state": a.state,
        "step": f"{a.status.get('step', 0)}/{a.status.get('steps', a.cfg.get('steps'))}",
        "test": tables.result_text(pm, s.get(f"test_{pm}")) if pm else "—",
        "wall time (s)": "—" if s.get("wall_time") is None else f"{s['wall_time']:.0f}",
        "model saved": downloads.saved_model_kind(a.rd.model_path) or "",
        "note": a.status.get("error") or a.status.get("message") or "",
    })
st.dataframe(arm_rows, hide_index=True, width="stretch")

b = st.columns(5)
if b[0].button("Live view", key="btn_runs_live", icon=":material/monitoring:", width="stretch"):
    ss["live_exp"] = exp_id
    st.switch_page(common.ROOT / "pages" / "live.py")
if b[1].button("Compare these", key="btn_runs_compare",
                icon=":material/compare_arrows:", width="stretch"):
    ss["w_cmp_pick"] = [f"{exp_id}/{a.id}" for a in arms]
    st.switch_page(common.ROOT / "pages" / "compare.py")
if b[2].button("Relaunch in Setup", key="btn_runs_relaunch", icon=":material/replay:",
               width="stretch",
               help="Load this experiment's config, methods and seeds into the Setup page; "
                    "change what you like and Start a new experiment."):
    base = meta.get("base_config") or (arms[0].cfg if arms else {})
    forms.prefill_setup(base, methods=meta.get("methods"), seeds=meta.get("seeds"))
    ss["w_exp_name"] = ""
    seeds_ = ", ".join(map(str, meta.get("seeds") or []))
    folder = f" (`{exp_id}`)" if names[exp_id] != exp_id else ""   # not "X (X)"
    ss["setup_msg"] = (f"Loaded the config of **{names[exp_id]}**{folder}: methods "
                       f"{', '.join(meta.get('methods') or [])}, seeds {seeds_ or '—'}. Change "
                       "what you like and Start a new experiment.")
    data = Path(str(base.get("dataset", "")))
    if data.is_file() and inside(jm.runs_dir, data):
        # An uploaded file kept in that experiment's folder: upload it again, so the new
        # experiment keeps its own copy (and survives deleting this one).
        blob = data.read_bytes()
        ss["upload"] = {"name": data.name, "data": blob, "sha1": hashlib.sha1(blob).hexdigest()}
        ss["upload_sized"] = ss["upload"]["sha1"]     # its sizes come with the relaunch
        ss["w_data_source"] = forms.DATA_UPLOAD
    st.switch_page(common.ROOT / "pages" / "setup.py")
if queued:
    if b[3].button("Remove from queue", key="btn_runs_dequeue", icon=":material/remove:",
                   width="stretch", help="It has not started: take it out of the queue (its "
                   "runs are marked stopped; Resume starts them later)."):
        jm.stop(exp_id)
        ss["flash"] = f"Removed {names[exp_id]} from the queue; Resume starts it later."
        st.rerun()
elif active:
    if b[3].button("Stop", key="btn_runs_stop", icon=":material/stop:", width="stretch"):
        jm.stop(exp_id)
        ss["flash"] = "Stopping after the current step; it can be resumed later."
        st.rerun()
elif state in ("stopped", "interrupted", "failed"):
    if b[3].button("Resume", key="btn_runs_resume", icon=":material/play_arrow:", width="stretch",
                   help="Continue the unfinished runs from their last checkpoint (or from the "
                        "start when there is none)."):
        try:
            jm.resume(exp_id)
        except ConfigError as e:
            st.error(str(e))
        else:
            ss["live_exp"] = exp_id
            st.switch_page(common.ROOT / "pages" / "live.py")
if b[4].button("Delete…", key="btn_runs_delete", icon=":material/delete:", width="stretch",
               disabled=training,
               help="It is training: press Stop first (it finishes the current step and "
                    "saves), then Delete." if training else
                    "Asks for confirmation." + (" It leaves the queue first." if queued else "")):
    ss["confirm_delete"] = exp_id

if ss.get("confirm_delete") == exp_id:
    with st.container(border=True):
        st.warning(f"Delete **{names[exp_id]}** and all its runs, metrics and saved models "
                   f"(`{exp}`)? This cannot be undone.")
        d1, d2, _ = st.columns([1, 1, 4])
        if d1.button("Yes, delete", type="primary", key="btn_runs_delete_yes"):
            ss.pop("confirm_delete", None)
            if exp_id in jm.queue():
                jm.stop(exp_id)      # dequeued: nothing of it runs, its folder can go
            if jm.current() == exp_id:
                # training (or it left the queue for the worker just now): the worker holds
                # its files until the current step is saved
                st.error(f"{names[exp_id]} is training: press Stop first (it finishes the "
                         "current step and saves), then Delete.")
            else:
                ExperimentDir(exp).delete(jm.runs_dir)
                ss.pop("w_runs_pick", None)
                ss["flash"] = f"Deleted {names[exp_id]}."
                st.rerun()
        if d2.button("Cancel", key="btn_runs_delete_no"):
            ss.pop("confirm_delete", None)
            st.rerun()

with st.expander("Rename"):
    r1, r2 = st.columns([3, 1])
    new_name = r1.text_input("display name", value=names[exp_id], key=f"rename_{exp_id}",
                             label_visibility="collapsed")
    if r2.button("Rename", key="btn_runs_rename"):
        try:
            ExperimentDir(exp).rename(new_name)
        except ValueError as e:
            st.error(str(e))
        else:
            ss["flash"] = f"Renamed {names[exp_id]} to {new_name.strip()}."   # said, not silent
            st.rerun()
    st.caption("Only the name shown in the app changes; the folder keeps its name.")

with st.expander("Downloads"):
    for a in arms:
        d1, d2, d3 = st.columns([2, 2, 2])
        d1.markdown(f"**{a.id}** {common.state_badge(a.state)}")
        model_dir = a.rd.model_path
        kind = downloads.saved_model_kind(model_dir)
        if kind:
            d2.download_button(f"fine-tuned {kind} (zip)",
                               lambda p=model_dir: downloads.zip_folder(p),
                               icon=":material/download:",
                               file_name=f"{exp_id}-{a.id}-model.zip", mime="application/zip",
                               key=f"dl_model_{a.id}", on_click="ignore")
        else:
            d2.caption("no saved model" + (" (save_model is off)" if not a.cfg.get("save_model")
                                          else " yet"))
        try:
            y = C.dumps(C.from_dict(a.cfg, check=False))
        except ConfigError:
            y = ""
        d3.download_button("config (YAML)", y, file_name=f"{a.id}.yaml", mime="text/yaml",
                           icon=":material/download:", key=f"dl_cfg_{a.id}", on_click="ignore",
                           disabled=not y)

# -- decoders: the generations stored at each evaluation --------------------------------------
dec_arms = [a for a in views.load_arms(exp) if a.samples or a.tokens]
if dec_arms:
    with st.expander("Generations (decoder runs)", expanded=True):
        st.caption("At each evaluation a decoder run stores a few greedy generations on "
                   "validation prompts (samples.jsonl) and, for distilling arms, one carried "
                   "sample's target tokens with the alpha and KD each got (tokens.jsonl).")
        g1, g2 = st.columns([2, 3])
        arm_ids = [a.id for a in dec_arms]
        if ss.get("w_runs_gen_arm") not in arm_ids:
            ss["w_runs_gen_arm"] = arm_ids[0]
        with g1:
            arm_id = st.selectbox("run", arm_ids, key="w_runs_gen_arm")
        a = next(x for x in dec_arms if x.id == arm_id)
        steps_ = sorted({int(r["step"]) for r in a.samples + a.tokens if r.get("step")})
        with g2:
            if len(steps_) > 1:
                if ss.get("w_runs_gen_step") not in steps_:
                    ss["w_runs_gen_step"] = steps_[-1]
                step = st.select_slider("evaluation at step", steps_, key="w_runs_gen_step")
            else:
                step = steps_[0] if steps_ else None
                st.caption(f"one evaluation, at step {step}")
        # the same columns and names as Live's table (app/samples.py)
        rows = [{k: v for k, v in r.items() if k not in ("run", "step")}
                for r in samples.sample_rows([a], step=step)]
        if rows:
            n_ok = sum(r["correct"] == "✓" for r in rows)
            st.dataframe(rows, hide_index=True, width="stretch")
            st.caption(f"{n_ok} of {len(rows)} shown correct at step {step} (the validation "
                       "exact match covers every validation prompt).")
        else:
            st.caption(f"No generations stored at step {step}.")
        view = next((v for v in a.tokens if v.get("step") == step), None)
        if view:
            st.html(f"<div style='font-size:0.85em;color:#555'>training sample "
                    f"{view.get('sample')}, coloured by alpha</div>"
                    + samples.tokens_html(view, "alpha", samples.token_scale([view], "alpha", [a]),
                                         common.method_color(a.method)))
        if a.rd.samples_path.is_file():
            st.download_button("all generations of this run (JSONL)",
                               lambda p=a.rd.samples_path: p.read_bytes(),
                               file_name=f"{exp_id}-{a.id}-samples.jsonl",
                               mime="application/jsonl", icon=":material/download:",
                               key="dl_runs_samples", on_click="ignore")

