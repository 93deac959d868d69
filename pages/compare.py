"""Compare: any runs (finished or running) overlaid, their config diff and the summary table."""
from __future__ import annotations

import streamlit as st

from app import common
from app.livechart import live_chart
from dynsdpb import config as C
from dynsdpb.compare import summarize_runs, table_rows

ss = st.session_state
jm = common.manager()

st.title("Compare")
options = common.all_arm_keys()
if not options:
    st.info("No runs yet. Start an experiment on the Setup page.")
    st.stop()
labels = dict(options)
keys = [k for k, _ in options]

if not [k for k in ss.get("w_cmp_pick") or [] if k in labels]:
    # Default: every arm of the newest experiment (usually vanilla vs dynsdpb).
    newest = keys[0].split("/")[0]
    ss["w_cmp_pick"] = [k for k in keys if k.split("/")[0] == newest]
else:
    ss["w_cmp_pick"] = [k for k in ss["w_cmp_pick"] if k in labels]
ss.setdefault("w_cmp_metrics", ["val_accuracy", "loss", "alpha", "logit_drift"])
ss.setdefault("w_cmp_x", "step")
ss.setdefault("w_cmp_color", "method")

st.multiselect("runs", keys, key="w_cmp_pick", format_func=lambda k: labels[k],
               help="Any runs from any experiments, finished or still running.")
picked = ss["w_cmp_pick"]
if not picked:
    st.info("Pick at least one run.")
    st.stop()

METRICS = ["val_accuracy", "val_macro_f1", "val_mcc", "val_loss", "val_pearson", "val_spearman",
           "val_mse", "loss", "ce", "kd", "alpha", "tau", "logit_drift", "agreement",
           "probe_drift", "u_mean", "d_mean", "lr", "grad_norm", "samples_per_s"]
c1, c2, c3 = st.columns([3, 1, 1])
with c1:
    chosen = st.multiselect("metrics to overlay", METRICS, key="w_cmp_metrics")
with c2:
    x = st.radio("x axis", list(common.X_LABELS), key="w_cmp_x",
                 format_func=lambda k: {"samples_seen": "samples seen"}.get(k, k))
with c3:
    color_by = st.radio("colour by", ["method", "run"], key="w_cmp_color",
                        help="method: one colour per method (dash = seed), as on the Live "
                             "page. run: one colour per run, to tell apart runs of one method.")

any_active = any(common.RunDir(common.runs_dir() / k).status().get("state") in
                 ("running", "queued") for k in picked)


@st.fragment(run_every=2.0 if any_active else None)
def charts() -> None:
    arms = [a for a in (common.find_arm(k) for k in picked) if a is not None]
    if not arms:
        st.warning("The picked runs are gone.")
        return
    methods = list(dict.fromkeys(a.method for a in arms))
    if color_by == "method":
        st.markdown("Colours: " + " &nbsp; ".join(common.method_chip(m) for m in methods)
                    + " &nbsp; (dash style = seed)", unsafe_allow_html=True)
    cols = st.columns(2)
    uirev = "compare:" + ",".join(picked) + f":{x}:{color_by}"
    for i, key in enumerate(chosen):
        fig = common.figure(common.fig_metric, arms, key, x, uirev=f"{uirev}:{key}",
                            color_by=color_by)
        with cols[i % 2]:
            live_chart(fig, key=f"cmp_chart_{key}", config=common.chart_config(f"compare-{key}"))
            st.download_button(f"{key} chart (HTML)", lambda fig=fig: common.figure_html(fig),
                               icon=":material/download:",
                               file_name=f"compare-{key}.html", mime="text/html",
                               key=f"cmp_html_{key}", on_click="ignore")
    st.caption("PNG: use the camera icon in each chart's toolbar. HTML files open offline "
               "(plotly.js is embedded) and stay interactive.")

    # -- summary table ----------------------------------------------------------------------
    st.subheader("Summary (test set)")
    summary = summarize_runs([a.rd for a in arms])
    rows = table_rows(summary)
    if rows:
        st.dataframe(rows, hide_index=True, width="stretch")
        st.caption(f"{summary['primary_metric']}: mean and sample std over seeds; the "
                   "difference to vanilla is paired by seed (same data order), with a 95% "
                   "t-interval. Runs that have not finished are left out.")
        for m, r in summary["methods"].items():
            if r.get("formula"):
                st.markdown(common.method_chip(m) + " &nbsp; " + r["formula"],
                            unsafe_allow_html=True)
    else:
        st.info("No picked run has finished yet: the test-set summary appears when they do.")

    # -- config diff ------------------------------------------------------------------------
    st.subheader("Config diff")
    show_all = st.toggle("show every field", key="w_cmp_all")
    names = [a.key for a in arms]
    diff = []
    for f in C.FIELDS:
        vals = [a.cfg.get(f) for a in arms]
        if show_all or len({repr(v) for v in vals}) > 1:
            diff.append({"field": f, **{n: str(v) for n, v in zip(names, vals)}})
    if diff:
        st.dataframe(diff, hide_index=True, width="stretch")
    else:
        st.caption("The picked runs have identical configs.")

    # -- download ---------------------------------------------------------------------------
    df = common.records_frame(arms)
    st.download_button("metrics of the picked runs (CSV)", df.to_csv(index=False),
                       icon=":material/download:",
                       file_name="dynsdpb-metrics.csv", mime="text/csv", key="cmp_csv",
                       on_click="ignore")


charts()
