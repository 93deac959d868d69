"""Self-training: set up a STaR or self-correction loop, start it through the JobManager, watch
the per-round numbers (kept traces, accuracy per method) beside each round's fine-tuning
curves, and browse the kept rationales and corrections (dynsdpb/selftrain/run.py).

A loop lives in its own folder of the runs directory (selftrain.json); each round is an engine
experiment inside it, so the fine-tuning curves are the engine's own metrics.jsonl."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import common, feed, figures, livestatus, loopstatus, views
from app.livechart import live_chart
from app.visibility import tab_hidden
from dynsdpb import config as C
from dynsdpb.selftrain import run as S
from dynsdpb.errors import ConfigError
from dynsdpb.store import RunDir, read_json, read_metrics

ss = st.session_state
jm = common.manager()

st.title("Self-training")
st.caption("Rounds of generate → keep the right answers → fine-tune (vanilla, DLB or DynSDPB) → "
           "evaluate. Every method runs its own loop from the same seed and base model; all "
           "finish round r before round r+1, so each round's comparison is paired.")

# -- set up ------------------------------------------------------------------------------------
FIELDS = ("model", "dataset", "steps", "batch_size", "lr", "max_len", "max_new_tokens",
          "max_train_samples", "val_size", "test_size", "finetune", "tau", "tau_0", "tau_max",
          "kd_cache")
LOOP_FIELDS = ("loop", "rounds", "questions", "samples", "temperature", "rationalize",
               "round_start", "step_growth", "carry_teacher")


def _load_preset() -> None:
    for k, v in {**S.CPU_DEMO["config"], **S.CPU_DEMO["loop"]}.items():
        ss[f"w_st_{k}"] = v
    ss["w_st_methods"] = list(S.CPU_DEMO["methods"])
    ss["w_st_seeds"] = ",".join(map(str, S.CPU_DEMO["seeds"]))


if "w_st_loop" not in ss:
    _load_preset()

with st.expander("Set up a loop", expanded=not jm.is_active()):
    st.button("CPU demo preset", on_click=_load_preset, help="arith-easy on smollm2-135m with "
              "LoRA: 32 questions, 2 STaR rounds of 8 steps, vanilla vs DynSDPB (a few "
              "minutes per round on 2 CPU cores).")
    c1, c2, c3 = st.columns(3)
    with c1:
        st.selectbox("loop", S.LOOPS, key="w_st_loop", help=S.LOOP_HELP["loop"])
        st.number_input("rounds", 1, 50, key="w_st_rounds", help=S.LOOP_HELP["rounds"])
        st.number_input("questions per round (0 = all)", 0, 100000, key="w_st_questions",
                        help=S.LOOP_HELP["questions"])
        st.number_input("samples per question", 1, 64, key="w_st_samples",
                        help=S.LOOP_HELP["samples"])
        st.number_input("temperature", 0.0, 5.0, step=0.1, key="w_st_temperature",
                        help=S.LOOP_HELP["temperature"])
        st.checkbox("rationalize wrong answers (STaR)", key="w_st_rationalize",
                    help=S.LOOP_HELP["rationalize"])
        st.radio("each round starts from", S.ROUND_STARTS, key="w_st_round_start",
                 horizontal=True, help=S.LOOP_HELP["round_start"])
        st.number_input("step growth per round", 1.0, 3.0, step=0.1, key="w_st_step_growth",
                        help=S.LOOP_HELP["step_growth"])
        st.checkbox("carry the teacher across rounds [ours]", key="w_st_carry_teacher",
                    help=S.LOOP_HELP["carry_teacher"],
                    disabled=ss.get("w_st_round_start") != "continue")
    with c2:
        st.text_input("model", key="w_st_model", help=C.field_help("model"))
        st.text_input("dataset", key="w_st_dataset", help=C.field_help("dataset"))
        st.multiselect("methods", list(C.METHODS), key="w_st_methods")
        st.text_input("seeds", key="w_st_seeds", help="comma-separated, e.g. 0,1,2")
        st.selectbox("finetune", C.FINETUNES, key="w_st_finetune", help=C.field_help("finetune"))
        st.selectbox("kd_cache", C.KD_CACHES, key="w_st_kd_cache", help=C.field_help("kd_cache"))
        t1, t2, t3 = st.columns(3)
        t1.number_input("tau (dlb)", 0.1, 10.0, step=0.1, key="w_st_tau",
                        help=C.field_help("tau"))
        t2.number_input("tau_0", 0.1, 10.0, step=0.1, key="w_st_tau_0",
                        help=C.field_help("tau_0"))
        t3.number_input("tau_max", 0.1, 10.0, step=0.1, key="w_st_tau_max",
                        help=C.field_help("tau_max"))
    with c3:
        for k in ("steps", "batch_size", "max_len", "max_new_tokens", "max_train_samples",
                  "val_size", "test_size"):
            st.number_input(k + (" per round" if k == "steps" else ""), 0, 100000,
                            key=f"w_st_{k}", help=C.field_help(k))
        st.number_input("lr", 0.0, 1.0, format="%.1e", key="w_st_lr", help=C.field_help("lr"))
    name = st.text_input("name (optional)", key="w_st_name")
    if st.button("Start", type="primary"):
        try:
            over = {k: ss[f"w_st_{k}"] for k in FIELDS}
            base = C.from_dict({**S.CPU_DEMO["config"], **over}, check=False)
            lv = {k: ss[f"w_st_{k}"] for k in LOOP_FIELDS}
            if lv["round_start"] != "continue":
                lv["carry_teacher"] = False       # the box is greyed out there: off
            loop = S.loop_from_dict(lv)
            seeds = C.parse_int_list("seeds", ss["w_st_seeds"])
            job = jm.submit_selftrain(base, loop, list(ss["w_st_methods"]), seeds, name)
            ss["w_st_pick"] = job.id
            ss["flash"] = f"queued {job.id}"
            st.rerun()
        except ConfigError as e:
            for p in e.problems:
                st.error(f"**{p.field}** = {p.value!r}: {p.fix}")

# -- pick a loop -------------------------------------------------------------------------------
loops = sorted((p.parent for p in jm.runs_dir.glob(f"*/{S.META}")),
               key=lambda p: (read_json(p / S.META, {}) or {}).get("created", 0), reverse=True)
if not loops:
    st.info("No self-training loops yet: set one up above.")
    st.stop()
ids = [p.name for p in loops]
if ss.get("w_st_pick") not in ids:
    ss["w_st_pick"] = ids[0]
pick = st.selectbox("loop folder", ids, key="w_st_pick")
path = jm.runs_dir / pick
meta = read_json(path / S.META, {}) or {}
sc = (meta.get("loop") or {}).get("loop") == "selfcorrect"
ACTIVE = loopstatus.ACTIVE
active_at_start = RunDir(path).status().get("state", "?") in ACTIVE
# As on Live: under the workbench's server (app/server.py) the status block and the
# fine-tuning curves fetch what is new from its live feed (app/feed.py), and the page reruns
# only when its block's key changes (the state, a failure, a round's files). Elsewhere the
# page polls by rerunning its fragment every common.STATUS_EVERY s while the loop runs; a
# change of state reruns the page once, which turns the polling off or on.
use_feed = active_at_start and feed.available()

# How the page names the answers, the same on Live: the gold one and the model's.
SHOWN = {"answer": "gold answer", "extracted": "model's answer",
         "first_extracted": "model's first answer"}


def header(view: dict) -> None:
    """The loop's state and where it is (under the live feed: one block with the rounds table
    that updates itself), a failure, and Stop or Resume."""
    state = view["state"]
    c1, c2 = st.columns([4, 1])
    with c1:
        if use_feed:
            livestatus.feed_block("st_status_block", loopstatus.loop_html(view), view["key"],
                                  common.server_url(feed.LOOP_PATH, loop=pick))
        else:
            st.markdown(f"{common.state_badge(state)} &nbsp; {view['where']}")
        if view.get("error"):
            st.error(f"{view['error']}" + (f" — hint: {view['hint']}" if view.get("hint")
                                           else ""))
    with c2:
        if state in ACTIVE:
            if ss.get("st_stopping") == pick:
                st.markdown(":orange-badge[stopping…]")
            elif st.button("Stop", help="finish the current step, checkpoint, stop"):
                jm.stop(pick)
                ss["st_stopping"] = pick
                st.rerun()
        elif state in ("stopped", "failed", "interrupted") and st.button("Resume"):
            try:
                jm.resume(pick)
                ss.pop("st_stopping", None)
                st.rerun()
            except ConfigError as e:
                st.error(str(e))


def browse(sc: bool) -> None:
    st.subheader("Kept " + ("corrections" if sc else "rationales") + " and test answers")
    arm_dirs = sorted(p.parent for p in path.glob("round-[0-9]*/*/train.jsonl"))
    if not arm_dirs:
        st.info("Nothing generated yet: the first round's traces appear here once generated.")
        return
    label = {str(p): f"{p.parent.name} / {p.name}" for p in arm_dirs}
    keys = [str(p) for p in arm_dirs]
    if ss.get("st_browse") not in keys:
        ss.pop("st_browse", None)
    which = st.selectbox("round / arm", keys, format_func=label.get, key="st_browse",
                         index=len(keys) - 1)
    show = st.radio("show", ["kept (training data)", "all traces", "test answers"],
                    horizontal=True, key="st_show")
    f = {"kept (training data)": "train.jsonl", "all traces": "traces.jsonl",
         "test answers": "eval.jsonl"}[show]
    info = read_json(Path(which) / "round.json", {}) or {}
    if info:
        st.caption(f"{info.get('kept')} kept of {info.get('traces')} traces"
                   + (f", {info.get('rationalized')} rationalized" if not sc else
                      f", {info.get('fixed')} fixed by the correction")
                   + "; not kept: " + ", ".join(f"{info.get('drop_' + k, 0)} {k}"
                                                for k in S.DROP_REASONS)
                   + f"; carried cache: {info.get('aligned_tokens')} tokens kept, "
                     f"{info.get('dropped_tokens')} dropped by alignment")
    rows = read_metrics(Path(which) / f)
    if not rows:
        if f == "train.jsonl" and (Path(which) / f).is_file():
            st.info("Nothing was kept in this round: "
                    + (info.get("note") or "no trace ended with the gold answer") + ".")
        elif f == "eval.jsonl" and not info:
            st.info("No test answers yet: the round's model is tested after its fine-tuning.")
        else:
            st.info(f"No {show} in this round yet.")
        return
    rows = [{SHOWN.get(k, k): v for k, v in r.items()} for r in rows]
    # widths that fit the page: with every text column "large" the flags at the right end
    # ("rationalized") were pushed out of view
    cols = {c: st.column_config.TextColumn(width="large") for c in ("prompt", "completion")}
    cols.update({c: st.column_config.TextColumn(width="medium")
                 for c in ("target", "question", "first")})
    cols.update({c: st.column_config.TextColumn(width="small") for c in SHOWN.values()})
    cols.update({c: st.column_config.CheckboxColumn(c, width="small")
                 for c in ("rationalized", "correct", "first_correct", "kept")})
    st.dataframe(rows, hide_index=True, width="stretch", column_config=cols)


def chart(exp_key: str, arms: list, fn, *args, key: str, **kw) -> None:
    """A live chart of fn(arms of experiment exp_key, ...); under the feed it fetches its new
    points by itself."""
    src = feed.chart_url(exp_key, fn, *args, **kw) if use_feed else None
    live_chart(figures.figure(fn, arms, *args, **kw), key=key, feed=src)


def watch() -> None:
    view = loopstatus.loop_view(path, meta)
    state = view["state"]
    if ss.get("st_stopping") == pick and state not in ACTIVE:
        ss.pop("st_stopping", None)
    header(view)
    summary = S.summarize(path)
    if not use_feed:           # under the feed the table is in the block
        st.markdown("##### Rounds")
        if view["rows"]:
            st.dataframe(view["rows"], hide_index=True, width="stretch",
                         column_config={"note": st.column_config.TextColumn(width="large")})
    kept = figures.fig_rounds_kept(summary)
    acc = figures.fig_rounds_accuracy(summary, selfcorrect=sc)
    left, right = st.columns(2)
    with left:
        live_chart(kept, key="st_kept")
        live_chart(acc, key="st_acc")
    with right:
        rounds = sorted(path.glob("round-[0-9]*/experiment.json"))
        if not rounds:
            st.info("The first round's fine-tuning has not started yet.")
        else:
            names = [p.parent.name for p in rounds]
            r = st.selectbox("fine-tuning curves of", names, index=len(names) - 1,
                             key="st_round")
            _, arms = views.load_arms_live(path / r)
            for k in ("alpha", "val_exact_match"):
                chart(f"{pick}/{r}", arms, figures.fig_metric, k, uirev=f"st-{k}-{r}",
                      key=f"st_{k}")
    if summary.get("rounds"):
        st.code(S.format_rounds(summary), language=None)     # full width: no clipped column
    if rounds:
        # three panels need the page's width: at half width their titles ran into each other
        chart(f"{pick}/{r}", arms, figures.fig_loss, uirev=f"st-loss-{r}", key="st_loss")
    browse(sc)
    if not use_feed and (state in ACTIVE) != active_at_start:
        st.rerun()


if use_feed:
    # outside any fragment: the block asks for a page rerun when its key changes; in a
    # container, as a fragment draws into one, so nothing moves when the loop ends
    with st.container():
        watch()
else:
    # A hidden tab polls nothing (app/visibility.py): showing it again reruns the page at once.
    st.fragment(run_every=common.STATUS_EVERY if active_at_start
                and not tab_hidden("st_tab_hidden") else None)(watch)()
