"""Live: one experiment's arms, updated while anything is training.

Two parts read the run folders (status.json, metrics.jsonl; the training process only writes
files): `status_section` (state, progress, Stop, the queue) every common.STATUS_EVERY seconds
and `live_charts` (the charts, which can be paused) every common.CHARTS_EVERY seconds. Under
the workbench's server (app/server.py) both fetch what is new from its live feed (app/feed.py)
without rerunning the page; elsewhere they are fragments that rerun. Either way nothing is
fetched when nothing is queued or running, nor in a hidden tab.

Watching must cost little whatever the number of tabs: each poll first compares a stat-only
signature of the run files (views.load_arms_live) and re-reads nothing when it is the same;
figures are built once per new record for all tabs (figures.figure) with at most a few hundred
points per trace, and a figure that did not change is sent as the same bytes, which
Streamlit's message cache replaces by a short reference (app/livechart.py). A fragment must
still draw its elements on every rerun: the browser removes those a fragment rerun skips.
The charts keep the user's zoom across updates (app/livechart.py).
"""
from __future__ import annotations

import streamlit as st

from app import common, feed, figures, livestatus, progress, samples, tables, views
from app.livechart import live_chart
from app.visibility import tab_hidden
from dynsdpb import config as C
from dynsdpb.engine.schedules import describe

ss = st.session_state
jm = common.manager()

st.title("Live")
exps = views.experiments(nested=True)     # sweeps' runs and loops' rounds too
if not exps:
    st.info("No experiments yet. Start one on the Setup page.")
    if st.button("Go to Setup", key="btn_go_setup"):
        st.switch_page(common.ROOT / "pages" / "setup.py")
    st.stop()

ids = [views.exp_key(e) for e in exps]
names = dict(zip(ids, map(views.exp_label, exps)))
if ss.get("live_exp") not in ids:
    now = views.exp_of_job(jm, jm.current())
    ss["live_exp"] = now if now in ids else ids[0]
ss["w_live_pick"] = ss["live_exp"]
ss.setdefault("w_live_x", "step")
ss.setdefault("w_live_follow", True)


def _picked() -> None:
    ss["live_exp"] = ss["w_live_pick"]
    # A deliberate choice wins over following the running experiment (it snapped back).
    ss["w_live_follow"] = False


ss.setdefault("w_live_pause", False)
c1, c2, c3 = st.columns([3, 2, 2])
with c1:
    exp_id = st.selectbox("experiment", ids, key="w_live_pick", persist_state="session",
                          on_change=_picked,
                          format_func=lambda i: f"{names[i]}  ({i})" if names[i] != i else i)
with c2:
    x = st.radio("x axis", list(figures.X_LABELS), horizontal=True, key="w_live_x",
                 persist_state="session",
                 format_func=lambda k: {"samples_seen": "samples seen"}.get(k, k),
                 help="samples seen counts forward passes: a distilling step forwards the "
                      "carried half again, so this axis compares at equal compute.")
with c3:
    follow = st.toggle("follow the running experiment", key="w_live_follow",
                       persist_state="session",
                       help="When the experiment shown is not training, switch to the one that "
                            "is (once per experiment).")
    paused = st.toggle("pause the charts", key="w_live_pause", persist_state="session",
                       help="Freeze the charts to look at them or explain them; status and "
                            "progress keep updating. Zoom and legend clicks are kept across "
                            "updates either way.")

active_at_start = jm.is_active()
# Under the workbench's server (app/server.py) the status block and the charts fetch what is
# new from its live feed by themselves (app/feed.py): the page reruns only when the state,
# the queue or a failure changes (a decoder's generations: that part alone, every few
# seconds). Elsewhere the page polls by rerunning its fragments; a hidden tab polls nothing
# (app/visibility.py), and showing it again reruns the page at once.
use_feed = active_at_start and feed.available()
run_every = (common.STATUS_EVERY if active_at_start and not use_feed
             and not tab_hidden("live_tab_hidden") else None)


def status_section() -> None:
    """Status, progress, Stop/Resume, the runs table and the queue: always live."""
    cur = views.exp_of_job(jm, jm.current())      # the experiment training now, as a key
    job = views.job_of_exp(exp_id)                # the job that trains the one shown
    exp = jm.runs_dir / exp_id
    _, arms = views.load_arms_live(exp)
    if not arms:
        st.warning("This experiment has no runs (it may have been deleted).")
        return
    viewed_active = any(a.state in ("running", "queued") for a in arms)
    if follow and cur and cur != exp_id and not viewed_active and ss.get("live_followed") != cur:
        ss["live_followed"] = cur     # jump to each newly started experiment once
        ss["live_exp"] = cur
        st.rerun()
    view = livestatus.status_view(jm, exp_id, arms)
    state = view["state"]

    # -- status, progress, stop -----------------------------------------------------------
    top1, top2 = st.columns([4, 1])
    with top1:
        if use_feed:
            # one block that updates itself from the server's live feed: no rerun per poll
            livestatus.live_status_block(view, common.server_url(feed.STATUS_PATH, exp=exp_id))
        else:
            st.markdown(" · ".join([common.state_badge(state), *view["words"]]))
            st.html(progress.bar_html(view["frac"], 'training progress'))   # no animation
            st.caption(view["caption"], help="Step records are written by the training "
                       f"process; this page re-reads them every {common.STATUS_EVERY:g} s.")
    with top2:
        if state not in ("running", "queued"):
            ss.pop("live_stopping", None)
        if state in ("running", "queued") and ss.get("live_stopping") == exp_id:
            # Stop takes a step and a checkpoint (seconds): say so until the state changes
            st.markdown(":orange-badge[:material/hourglass_top: stopping…]",
                        help="Finishing the current step and saving a checkpoint.")
        elif state in ("running", "queued"):
            if st.button("Stop", key="btn_stop", width="stretch", icon=":material/stop:",
                         help="Finishes the current step, saves a checkpoint; resume later "
                              "from the Runs page."):
                jm.stop(job)
                ss["live_stopping"] = exp_id
                ss["flash"] = "Stopping after the current step; it can be resumed later."
                st.rerun()
        elif state in ("stopped", "interrupted", "failed"):
            if st.button("Resume", key="btn_resume", width="stretch",
                         icon=":material/play_arrow:",
                         help="Continue the unfinished runs from their last checkpoint."):
                jm.resume(job)
                st.rerun()

    if not use_feed:
        # a static table: the interactive grid (st.dataframe) redrawn at every poll cost
        # about twice the browser CPU of this one per open tab
        st.table(view["rows"], hide_index=True, border="horizontal")
    else:
        st.empty()        # where the table is when polling (it is in the block here)
    msgs = st.container()   # fixed slots keep the elements below in place between updates
    for a in arms:
        if a.state == "failed":
            msgs.error(f"{a.id} failed: {a.status.get('error')}  \nWhat to do: "
                     f"{a.status.get('hint', '')}")
        elif a.state == "interrupted":
            msgs.warning(f"{a.id}: {a.status.get('message', 'interrupted')}")

    # The same list and count as the sidebar's "Waiting: N" (app/main.py): jm.queue().
    q = jm.queue()
    qbox = st.container()
    if q or (cur and cur != exp_id):
        with qbox.container(border=True):
            st.markdown(f"**Queue**: {progress.waiting_words(len(q))} (one experiment trains "
                        "at a time)")
            if cur and cur != exp_id:
                st.markdown(f":material/play_circle: training now: "
                            f"{views.job_label(jm, jm.current())}")
            for i, qid in enumerate(q):
                qc1, qc2 = st.columns([5, 1])
                this = " (shown here)" if qid == job else ""
                qc1.markdown(f"{i + 1}. :material/hourglass_empty: "
                             f"{views.job_label(jm, qid)}{this}")
                if qc2.button("remove", key=f"btn_dequeue_{qid}"):
                    jm.stop(qid)
                    st.rerun()

    # Polling stops with the last run: one full rerun turns run_every off (or on again).
    if not use_feed and jm.is_active() != active_at_start:
        st.rerun()


ss.setdefault("w_live_tok_show", "kd")   # KD differs per token; alpha is often per sequence


def decoder_views(arms: list[views.ArmView]) -> None:
    """Decoders: the latest evaluation's sample generations of every arm, and one carried
    sample's target tokens coloured by the alpha (or KD) each got. Both come from
    samples.jsonl / tokens.jsonl, read with the metrics (views.load_arms_live)."""
    st.markdown("##### Sample generations (latest evaluation)")
    rows = samples.sample_rows(arms)
    if rows:
        st.dataframe(rows, hide_index=True, width="stretch",
                     # the short columns first and narrow, the long texts last: nothing
                     # that decides a row (answers, correct, cut off) is pushed out of view
                     column_config={"prompt (end)": st.column_config.TextColumn(width="medium"),
                                    "generation": st.column_config.TextColumn(width="large")})
        steps = samples.sample_steps(arms)
        when = ("every arm at step " + str(next(iter(steps.values())))
                if len(set(steps.values())) == 1 else
                "each arm's latest evaluation, at different steps: "
                + ", ".join(f"{k} at step {v}" for k, v in steps.items()))
        st.caption(f"Greedy generations on the first validation prompts ({when}); prompt "
                   "(end) = its last characters, where the question is; model's answer = the "
                   "last number of the generation; correct (flexible) = it equals the gold "
                   "answer; strict = the generation ended by itself and is the answer or ends "
                   "with a marked one ('#### N', 'The answer is N.'); ✂ = cut off at "
                   "max_new_tokens (no end of sequence), maybe before its answer.")
    else:
        st.caption("No generations yet: each evaluation stores a few (eval_generations), the "
                   "first at step " f"{arms[0].cfg.get('eval_every')}.")

    st.markdown("##### One carried sample's target tokens")
    distilling = [a for a in arms if a.method != "vanilla"]
    views = [(a, a.tokens[-1]) for a in distilling if a.tokens]
    if not views:
        st.caption("No token view yet: distilling arms store one carried sample's tokens at "
                   "each evaluation (vanilla has no KD)." if distilling else
                   "Only distilling arms (dlb, dynsdpb) have per-token alpha and KD.")
        return
    show = st.segmented_control("colour by", list(samples.TOKEN_SHOW), key="w_live_tok_show",
                                format_func=samples.TOKEN_SHOW.get, persist_state="session",
                                required=True,
                                help="alpha: the KD weight each target token got (one per "
                                "sequence unless granularity is token). KD: alpha * tau^2 * "
                                "KL at that token, in nats.") or "alpha"
    vmax = samples.token_scale([v for _, v in views], show, [a for a, _ in views])
    for a, v in views:
        st.html(f"<div style='font-size:0.85em;color:#555'>{common.method_chip(a.method)} "
                f"{a.id}: step {v.get('step')}, training sample {v.get('sample')}</div>"
                + samples.tokens_html(v, show, vmax, common.method_color(a.method),
                                     legend=False))
    ms = {a.method for a, _ in views}   # the legend in the arms' colour when they share one
    st.html(samples.token_legend(show, vmax, common.method_color(ms.pop()) if len(ms) == 1
                                else common.METHOD_COLORS["vanilla"]))
    per_seq = [a.id for a, _ in views if a.method == "dlb"
               or a.cfg.get("granularity", "sample") != "token"]
    if per_seq and show == "alpha":
        st.caption(f"alpha is one per sequence in {', '.join(per_seq)} (dlb, or granularity "
                   "sample): every target token of a sequence gets the same alpha, hence one "
                   "colour. The KD term differs per token.")
    st.caption("The carried sample is the first of the step before the evaluation; its "
               "prompt is grey (no loss, no KD there). KD is computed at target tokens only; "
               "hover a token for its values.")


def decoder_section() -> None:
    _, arms = views.load_arms_live(jm.runs_dir / exp_id)
    if arms:
        decoder_views(arms)


@st.fragment(run_every=None if (paused or not run_every) else common.CHARTS_EVERY)
def live_charts() -> None:
    """The four charts, the schedule formulas and (when done) the test results."""
    _, arms = views.load_arms_live(jm.runs_dir / exp_id)
    if not arms:
        return

    def chart(fn, *args, key: str, config: dict, **kw) -> None:
        """One live chart of fn(arms, *args, **kw); under the live feed it fetches its new
        points from the server while the run trains (unless the charts are paused)."""
        src = feed.chart_url(exp_id, fn, *args, **kw) if use_feed and not paused else None
        live_chart(figures.figure(fn, arms, *args, **kw), key=key, config=config, feed=src)
    state = views.exp_state([a.state for a in arms])
    methods = list(dict.fromkeys(a.method for a in arms))
    st.markdown("Colours: " + " &nbsp; ".join(common.method_chip(m) for m in methods)
                + " &nbsp; (dash style = seed)", unsafe_allow_html=True)
    uirev = f"{exp_id}:{x}"
    val_key = views.primary_val_metric(arms)

    decoder = any(a.decoder for a in arms)
    st.markdown("##### Validation " + val_key.removeprefix("val_").replace("_", " "))
    every = f"validation set, every {arms[0].cfg.get('eval_every')} steps"
    if arms[0].cfg.get("eval_on_start"):
        every += " and at step 0"
    if decoder:
        # exact match of greedy answers (%), and perplexity on the targets: with few steps
        # exact match moves in coarse jumps, perplexity shows learning before it does
        v1, v0, v2 = st.columns(3)
        with v1:
            chart(figures.fig_metric, val_key, x, uirev=uirev + ":val",
                  title=f"exact match (flexible), % ({every})",
                  key="chart_val", config=figures.chart_config(f"{exp_id}-{val_key}"))
        with v0:
            chart(figures.fig_metric, "val_strict_exact_match", x,
                  uirev=uirev + ":strict",
                  title="exact match (strict: finished, answer in place), %",
                  key="chart_strict", config=figures.chart_config(f"{exp_id}-strict"))
        with v2:
            chart(figures.fig_metric, "val_perplexity", x,
                  uirev=uirev + ":ppl",
                  title=f"perplexity on the targets ({every})",
                  key="chart_ppl", config=figures.chart_config(f"{exp_id}-perplexity"))
        # the generations and the token view change at evaluations: under the feed this part
        # alone reruns (the charts fetch their points themselves)
        st.fragment(run_every=common.CHARTS_EVERY if use_feed and not paused else None)(
            decoder_section)()
    else:
        chart(figures.fig_metric, val_key, x, uirev=uirev + ":val",
              title=f"{figures.title_of(val_key)} ({every})",
              key="chart_val", config=figures.chart_config(f"{exp_id}-{val_key}"))

    st.markdown("##### alpha and tau per step (mean line, min-max band over the carried half)")
    for m in methods:
        if m == "vanilla":
            continue
        a0 = next(a for a in arms if a.method == m)
        try:
            rc = C.from_dict(a0.cfg, check=False)
            text = f"schedule **{rc.resolved_schedule}**: {describe(rc)}"
        except Exception:  # noqa: BLE001 - an old or odd config must not break the page
            text = "schedule unknown"
        st.markdown(common.method_chip(m) + " &nbsp; " + text, unsafe_allow_html=True)
    if decoder:
        st.caption("Decoders: one alpha and tau per carried sequence, from the mean "
                   "uncertainty and margin over its target tokens (granularity token: per "
                   "token); the band spans the carried sequences.")
    if "vanilla" in methods:
        st.caption("vanilla has no distillation term, so no alpha or tau (alpha = 0).")
    chart(figures.fig_alpha_tau, x, uirev=uirev + ":at",
          key="chart_alpha_tau", config=figures.chart_config(f"{exp_id}-alpha-tau"))
    if decoder and any(a.method in ("dlb", "dynsdpb") for a in arms) and any(
            a.cfg.get("kd_cache", "topk") == "topk" for a in arms):
        st.markdown("##### Cached top-k teacher mass")
        st.caption(f"The teacher's probability mass (at its tau) that the top_k cached tokens "
                   f"hold, mean over the carried target tokens. Below "
                   f"{100 * C.KD_MASS_WARN:.0f} % KD sees a coarse teacher: lower tau / tau_max "
                   "or use kd_cache full (the run's status warns once).")
        for a in arms:
            for w in (a.rd.raw_status().get("warnings") or []):
                if "top-k teacher cache" in w:
                    st.warning(f"{a.id}: {w}")
        chart(figures.fig_metric, "kd_topk_mass", x,
              uirev=uirev + ":mass",
              title="cached top-k mass, % of the teacher's",
              key="chart_topk_mass", config=figures.chart_config(f"{exp_id}-topk-mass"))

    st.markdown("##### Drift: how far predictions move")
    st.caption("logit drift = KL(previous-step prediction ‖ current), on the carried half before "
               "the update; agreement = share of carried samples whose predicted class did not "
               "change. Only distilling arms have a carried half; probe drift (same KL on a fixed "
               "probe set, between evaluations) covers every arm, vanilla included.")
    chart(figures.fig_drift, x, uirev=uirev + ":drift",
          key="chart_drift", config=figures.chart_config(f"{exp_id}-drift"))
    st.caption("The drift split, at each evaluation: **update part** = KL between the carried "
               "half's no-dropout (eval-mode) outputs one step ago and now: what the update "
               "alone moved (it grows as lr²). **dropout part** = KL between two train-mode "
               "passes with the same weights and last step's vs this step's dropout masks: "
               "noise, no learning. logit drift (train mode, DLB's teacher) holds both; with "
               "frozen weights it equals the dropout part, without dropout the update part.")
    chart(figures.fig_drift_split, x, uirev=uirev + ":dsplit",
          key="chart_drift_split", config=figures.chart_config(f"{exp_id}-drift-split"))

    st.markdown("##### Loss parts")
    chart(figures.fig_loss, x, uirev=uirev + ":loss",
          key="chart_loss", config=figures.chart_config(f"{exp_id}-loss"))

    finished = [a for a in arms if a.state == "finished"]
    if finished and state == "finished":
        from dynsdpb.compare import summarize_runs
        st.markdown("##### Test results")
        st.dataframe(tables.summary_rows(summarize_runs([a.rd for a in arms])), hide_index=True,
                     width="stretch")


if use_feed:
    # outside any fragment: its block asks for a page rerun when the state or the queue
    # changes. In a container, as a fragment draws into one (Streamlit 1.67): when the run
    # ends and the page switches to polling, the elements below keep their places and the
    # charts are not mounted anew (a resync and a whole redraw each, the zoom lost).
    with st.container():
        status_section()
else:
    st.fragment(run_every=run_every)(status_section)()
if paused and active_at_start:
    st.info("Charts paused. Turn the pause off to follow the run again.")
live_charts()
