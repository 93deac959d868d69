"""Compare: any runs (finished or running) overlaid, their config diff and the summary table."""
from __future__ import annotations

import streamlit as st

from app import common, downloads, figures, tables, views
from app.livechart import live_chart
from dynsdpb import config as C
from dynsdpb.compare import cautions, metric_title, sample_size, summarize_runs
from dynsdpb.records import EVAL_KEYS, PLOTTABLE, axis_title
from dynsdpb.store import RunDir

ss = st.session_state
jm = common.manager()

st.title("Compare")


def sweeps() -> None:
    """A sweep's paired gain per grid cell (dynsdpb/sweep/read.py): a heatmap, interval on hover,
    * on cells whose 95% interval excludes 0; the same numbers as each cell's summary."""
    from dynsdpb.sweep import read as SR
    found = SR.find_sweeps(common.runs_dir())
    if not found:
        return
    ex = st.expander("Sweeps: paired gain per grid cell (heatmaps)")
    with ex:
        _sweep_view(found)


def _sweep_view(found) -> None:
    import math

    import plotly.graph_objects as go

    from dynsdpb.sweep import spec as SW
    from dynsdpb.sweep import read as SR
    pick = st.selectbox("sweep", [p.name for p in found], key="w_cmp_sweep")
    path = common.runs_dir() / pick
    spec = SW.load_sweep(path)
    cl = SR.cells(path)
    axes = list(spec["grid"] or spec["search"])
    # the same count as Runs (SR.overview: unique runs), not runs counted once per cell
    ov = SR.overview(path)
    st.caption(f"{spec['kind']} over {', '.join(axes)}; methods {', '.join(spec['methods'])}; "
               f"seeds {', '.join(map(str, spec['seeds']))}; {ov['runs_finished']} of "
               f"{ov['runs_total']} runs finished, {len(cl)} cells (a baseline that does not "
               "read a swept field is one run shared by the cells).")
    if spec["kind"] != "grid":
        st.dataframe([{**c["params"], "gain vs vanilla": SR.score(c["summary"], spec["target"])}
                      for c in cl], hide_index=True)
        return
    c1, c2, c3 = st.columns(3)
    x = c1.selectbox("x axis", axes, key="w_sw_x")
    y = c2.selectbox("y axis", [a for a in axes if a != x] or [""], key="w_sw_y")
    methods = [m for m in spec["methods"] if m != "vanilla"]
    target = c3.selectbox("method", methods, index=methods.index(spec["target"]),
                          key="w_sw_t")
    fixed = {a: st.selectbox(a, spec["grid"][a], key=f"w_sw_fix_{a}")
             for a in axes if a not in (x, y)}
    vss = ["vanilla"] + (["dlb"] if target == "dynsdpb" and "dlb" in spec["methods"] else [])
    for vs in vss:
        hm = SR.heatmap(cl, x, y, target, vs, fixed)
        pts = lambda v: 100 * v if math.isfinite(v) else None  # noqa: E731
        z = [[pts(v) for v in row] for row in hm["z"]]
        text = [[("" if v is None else f"{v:+.2f}{'*' if s else ''}") for v, s in zip(r, sr)]
                for r, sr in zip(z, hm["significant"])]
        hover = [[f"{x}={xv}, {y}={yv}<br>{target} - {vs}: "
                  + ("n/a" if pts(m) is None else
                     f"{pts(m):+.2f} points [{100 * lo:.2f}, {100 * hi:.2f}], n={n}")
                  for xv, m, lo, hi, n in zip(hm["x"], zr, lr, hr, nr)]
                 for yv, zr, lr, hr, nr in zip(hm["y"], hm["z"], hm["ci_low"], hm["ci_high"],
                                               hm["n"])]
        lim = max([abs(v) for r in z for v in r if v is not None] or [1.0])
        fig = go.Figure(go.Heatmap(z=z, x=[str(v) for v in hm["x"]],
                                   y=[str(v) for v in hm["y"]], text=text,
                                   texttemplate="%{text}", customdata=hover,
                                   hovertemplate="%{customdata}<extra></extra>",
                                   colorscale="RdBu", zmid=0, zmin=-lim, zmax=lim,
                                   colorbar={"title": "points"}))
        fig.update_layout(title=f"{target} - {vs} (paired by seed; * = 95% interval excludes 0)",
                          xaxis_title=x, yaxis_title=y, height=320,
                          # grid values are labels: numeric-looking ones (1.0, 4.0; 5e-05)
                          # on a linear axis stretch one cell over its empty neighbours
                          xaxis_type="category", yaxis_type="category",
                          margin={"l": 10, "r": 10, "t": 40, "b": 10})
        st.plotly_chart(fig, key=f"sw_hm_{vs}")
    if st.button("Write a report of this sweep", key="sw_report"):
        from dynsdpb.report import write_report
        md = write_report([str(path)], path / "report")
        st.success(f"Written to `{path / 'report'}`.")
        st.download_button("report.md", md, "report.md", mime="text/markdown",
                           key="sw_report_md", on_click="ignore")


sweeps()

options = views.all_arm_keys()
if not options:
    st.info("No runs yet. Start an experiment on the Setup page.")
    st.stop()
labels = dict(options)
keys = [k for k, _ in options]

if not [k for k in ss.get("w_cmp_pick") or [] if k in labels]:
    # Default: every arm of the newest experiment that has finished runs (usually vanilla vs
    # dynsdpb); a queued experiment has nothing to compare yet.
    def _state(k: str) -> str:
        return RunDir(common.runs_dir() / k).status().get("state", "?")
    done = [k for k in keys if _state(k) == "finished"]
    newest = (done or keys)[0].rpartition("/")[0]
    ss["w_cmp_pick"] = [k for k in keys if k.rpartition("/")[0] == newest]
else:
    ss["w_cmp_pick"] = [k for k in ss["w_cmp_pick"] if k in labels]
# Default charts by kind: decoders lead with exact match (%) and perplexity. A default list
# follows the picked runs' kind; a list the user changed stays as it is.
ENCODER_METRICS = ["val_accuracy", "loss", "alpha", "logit_drift"]
DECODER_METRICS = ["val_exact_match", "val_perplexity", "loss", "alpha"]
ss.setdefault("w_cmp_metrics", ENCODER_METRICS)
ss.setdefault("w_cmp_x", "step")
ss.setdefault("w_cmp_color", "method")

st.multiselect("runs", keys, key="w_cmp_pick", persist_state="session",
               format_func=lambda k: labels[k],
               help="Any runs from any experiments, finished or still running.")
picked = ss["w_cmp_pick"]
if not picked:
    st.info("Pick at least one run.")
    st.stop()


def _is_decoder_run(k: str) -> bool:
    cfg = RunDir(common.runs_dir() / k).config()
    try:
        return C.is_causal_lm(C.from_dict(cfg, check=False))
    except Exception:  # noqa: BLE001 - an old or odd config is just not a decoder
        return False


decoders = any(_is_decoder_run(k) for k in picked)
if ss["w_cmp_metrics"] in (ENCODER_METRICS, DECODER_METRICS):
    ss["w_cmp_metrics"] = DECODER_METRICS if decoders else ENCODER_METRICS

# Every number the engine records (dynsdpb/records.py), evaluation metrics first; the x axes
# (step, epoch, samples seen) are chosen below.
METRICS = [k for k in EVAL_KEYS if k in PLOTTABLE] + [
    k for k in PLOTTABLE if k not in EVAL_KEYS and k not in figures.X_LABELS]
ss["w_cmp_metrics"] = [k for k in ss["w_cmp_metrics"] if k in METRICS]
c1, c2, c3 = st.columns([3, 1, 1])
with c1:
    chosen = st.multiselect("metrics to overlay", METRICS, key="w_cmp_metrics",
                            persist_state="session", format_func=lambda k: f"{k}: {axis_title(k)}")
with c2:
    x = st.radio("x axis", list(figures.X_LABELS), key="w_cmp_x", persist_state="session",
                 format_func=lambda k: {"samples_seen": "samples seen"}.get(k, k))
with c3:
    color_by = st.radio("colour by", ["method", "run"], key="w_cmp_color", persist_state="session",
                        help="method: one colour per method (dash = seed), as on the Live "
                             "page. run: one colour per run, to tell apart runs of one method.")

any_active = any(RunDir(common.runs_dir() / k).status().get("state") in
                 ("running", "queued") for k in picked)


def _picked_arms() -> list[views.ArmView]:
    """The picked runs, re-read only when their experiment's files changed (stat signature)."""
    by_exp: dict[str, list[str]] = {}
    for k in picked:
        exp_id, _, arm = k.rpartition("/")
        by_exp.setdefault(exp_id, []).append(arm)
    found = {}
    for exp_id, wanted in by_exp.items():
        _, arms = views.load_arms_live(common.runs_dir() / exp_id)
        found.update({a.key: a for a in arms if a.id in wanted})
    return [found[k] for k in picked if k in found]


@st.fragment(run_every=2.5 if any_active else None)
def charts() -> None:
    arms = _picked_arms()
    if not arms:
        st.warning("The picked runs are gone.")
        return
    methods = list(dict.fromkeys(a.method for a in arms))
    if color_by == "method":
        st.markdown("Colours: " + " &nbsp; ".join(common.method_chip(m) for m in methods)
                    + " &nbsp; (dash style = seed)", unsafe_allow_html=True)
    cols = st.columns(2)
    uirev = "compare:" + ",".join(picked) + f":{x}:{color_by}"
    figs = []
    for i, key in enumerate(chosen):
        fig = figures.figure(figures.fig_metric, arms, key, x, uirev=f"{uirev}:{key}",
                            color_by=color_by)
        figs.append((axis_title(key), fig))
        with cols[i % 2]:
            live_chart(fig, key=f"cmp_chart_{key}", config=figures.chart_config(f"compare-{key}"))
    if figs:
        # One file with every chart: plotly.js (4.8 MB) once, not once per chart.
        st.download_button("these charts (HTML, one file)",
                           lambda figs=figs: figures.figures_html(figs, "DynSDPB compare"),
                           icon=":material/download:", file_name="dynsdpb-compare.html",
                           mime="text/html", key="cmp_html", on_click="ignore")
    st.caption("PNG: use the camera icon in each chart's toolbar. The HTML file opens "
               "offline (plotly.js is embedded once) and stays interactive.")

    # -- summary table ----------------------------------------------------------------------
    st.subheader("Summary (test set)")
    summary = summarize_runs([a.rd for a in arms])
    rows = tables.summary_rows(summary)
    if rows:
        # what every number below stands on, then what makes it weak: before the numbers
        st.markdown(f"**Sample size:** {sample_size(summary)}.")
        said = cautions(summary)
        if said:
            st.warning("\n".join(f"- {c}" for c in said), icon=":material/warning:")
        st.dataframe(rows, hide_index=True, width="stretch")
        pm = summary["primary_metric"]
        if pm == "test_exact_match":
            st.dataframe(tables.decoder_summary_rows(summary), hide_index=True,
                         width="stretch")
            st.caption("Decoders: exact match = share of test prompts whose greedy "
                       "generation's final answer equals the gold one; perplexity = exp of the "
                       "mean CE per target token (lower is better); both per seed below.")
        st.caption(f"{metric_title(summary['primary_metric'])}: mean and sample std over "
                   "seeds; the difference to vanilla is paired by seed (same data order), "
                   "with a 95% t-interval and n = the number of seed pairs. A difference is a "
                   "gain or a loss only when its interval excludes 0. Runs that have not "
                   "finished are left out.")
        for m, r in summary["methods"].items():
            if r.get("formula"):
                st.markdown(common.method_chip(m) + " &nbsp; " + r["formula"],
                            unsafe_allow_html=True)
    else:
        st.info("No picked run has finished yet: the test-set summary appears when they do.")

    # -- config diff ------------------------------------------------------------------------
    st.subheader("Config diff")
    show_all = st.toggle("show every field", key="w_cmp_all", persist_state="session")
    names = [a.key for a in arms]
    diff = []
    for f in C.FIELDS:
        vals = [a.cfg.get(f) for a in arms]
        if show_all or len({repr(v) for v in vals}) > 1:
            diff.append({"field": f, **{n: "—" if v is None else str(v)
                                        for n, v in zip(names, vals)}})
    if diff:
        st.dataframe(diff, hide_index=True, width="stretch")
    else:
        st.caption("The picked runs have identical configs.")

    # -- report -----------------------------------------------------------------------------
    if st.button("Write a report (report.md + PNG charts)", key="cmp_report"):
        import time
        from dynsdpb.report import write_report
        from dynsdpb.store import ExperimentDir
        exps = list(dict.fromkeys(str(a.rd.path.parent) for a in arms
                                  if ExperimentDir(a.rd.path.parent).exists()))
        out = common.runs_dir() / "reports" / time.strftime("%Y%m%d-%H%M%S")
        md = write_report(exps, out)
        st.success(f"Written to `{out}`.")
        st.download_button("report.md", md, "report.md", mime="text/markdown",
                           key="cmp_report_md", on_click="ignore")

    # -- download ---------------------------------------------------------------------------
    df = downloads.records_frame(arms)
    st.download_button("metrics of the picked runs (CSV)", df.to_csv(index=False),
                       icon=":material/download:",
                       file_name="dynsdpb-metrics.csv", mime="text/csv", key="cmp_csv",
                       on_click="ignore")


charts()
