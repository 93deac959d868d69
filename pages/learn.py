"""Learn: how DLB feeds its batches, how DynSDPB turns uncertainty and margin into alpha
and tau, and how decoders distil at target tokens (top-k cache, output alignment). Pictures are drawn with the engine's own code (BatchLayout, the schedules), so what
you see here is what training does."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st
import torch
from plotly.subplots import make_subplots

from app import common, figures, gain
from dynsdpb import config as C
from dynsdpb.engine.layout import BatchLayout
from dynsdpb.paths import ASSETS
from dynsdpb.engine.schedules import describe, dyn_alpha_tau, signals, static_alpha

ss = st.session_state
st.title("Learn")
st.caption("Self-distillation from the previous mini-batch: the model's own predictions from "
           "one step earlier are the teacher. No second model, no extra forward pass for the "
           "teacher.")
# Static figures from assets/figures/ (scripts/make_figures.py draws them with BatchLayout).
FIGURES = ASSETS / "figures"
st.image(str(FIGURES / "dynsdpb-step.svg"))

# =============================================================================================
st.header("1 · The batch layout (DLB)")
c1, c2, c3 = st.columns(3)
ss.setdefault("w_learn_b", 4)
ss.setdefault("w_learn_budget", "epochs")
ss.setdefault("w_learn_n", 10)
with c1:
    B = st.select_slider("batch_size", [2, 4, 6, 8], key="w_learn_b", persist_state="session")
with c2:
    budget = st.radio("budget", list(C.BUDGETS), key="w_learn_budget", persist_state="session",
                      horizontal=True,
                      help=C.field_help("budget"))
with c3:
    n = st.slider("training samples", 6, 16, key="w_learn_n", persist_state="session",
                  help="A tiny training set, so the epoch boundary shows.")

chunk = B // 2 if budget == "compute" else B
steps = 6
lay = BatchLayout(n, chunk, seed=0, distill=True)
van = BatchLayout(n, B, seed=0, distill=False)
CARRIED, NEW, VAN = "#ff7f0e", common.METHOD_COLORS["dynsdpb"], common.METHOD_COLORS["vanilla"]

fig = make_subplots(rows=1, cols=2, column_widths=[0.62, 0.38], horizontal_spacing=0.06,
                    subplot_titles=("DLB / DynSDPB: step t trains on chunk t-1 (carried) + chunk t "
                                    "(new)", "vanilla: step t trains on its own chunk"))


SHAPES: list[dict] = []   # added in one go: plotly's add_shape per cell takes ~10 ms each


def _cells(col: int, lay_: BatchLayout, carried_color: str, new_color: str) -> None:
    xr, yr = ("x", "y") if col == 1 else (f"x{col}", f"y{col}")
    xs, ys, labels, hovers = [], [], [], []
    for t in range(steps):
        b = lay_.batch(t)
        start = (t - 1) * lay_.chunk_size if b.carried else t * lay_.chunk_size
        for j, sid in enumerate(b.carried + b.new):
            pos = start + j
            is_carried = j < len(b.carried)
            color = carried_color if is_carried else new_color
            SHAPES.append(dict(type="rect", x0=pos + 0.05, x1=pos + 0.95, y0=t - 0.4,
                               y1=t + 0.4, xref=xr, yref=yr, line=dict(color=color, width=1),
                               fillcolor=common.rgba(color, 0.35 if is_carried else 0.75)))
            xs.append(pos + 0.5)
            ys.append(t)
            labels.append(str(sid))
            hovers.append(f"step {t + 1}: sample {sid}, " + (
                f"carried: distilled toward its logits from step {t}" if is_carried
                else "new: CE, logits recorded"))
        if b.carried and col == 1:
            # the previous step's new chunk comes back as this step's carried chunk
            mid = start + lay_.chunk_size / 2
            fig.add_annotation(x=mid, y=t - 0.42, ax=mid, ay=t - 0.9, xref="x", yref="y",
                               axref="x", ayref="y", showarrow=True, arrowhead=2,
                               arrowcolor=CARRIED, arrowwidth=1.5)
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="text", text=labels, hovertext=hovers,
                             hoverinfo="text", showlegend=False,
                             textfont=dict(size=11, color="#111")), row=1, col=col)
    width = steps * lay_.chunk_size + lay_.chunk_size
    for e in range(1, width // n + 1):
        SHAPES.append(dict(type="line", x0=e * n, x1=e * n, y0=0, y1=1, xref=xr,
                           yref=f"{yr} domain", line=dict(color="#888", dash="dot", width=1)))


_cells(1, lay, CARRIED, NEW)
_cells(2, van, VAN, VAN)
fig.update_layout(shapes=SHAPES)
for name, color, op in (("carried half: KD toward last step's logits (+ CE)", CARRIED, 0.35),
                        ("new half: CE, logits recorded for the next step", NEW, 0.75),
                        ("vanilla batch: CE only", VAN, 0.75)):
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=name,
                             marker=dict(symbol="square", size=12, color=common.rgba(color, op))))
fig.update_yaxes(autorange="reversed", tickvals=list(range(steps)),
                 ticktext=[f"step {t + 1}" for t in range(steps)], showgrid=False)
fig.update_xaxes(showgrid=False, zeroline=False)
fig.update_xaxes(title_text="position in the shuffled sample stream (dotted: epoch boundary)",
                 row=1, col=1)
fig.update_xaxes(title_text="position", row=1, col=2)
fig.update_layout(height=360, margin=dict(l=10, r=10, t=40, b=10), template="plotly_white",
                  legend=dict(orientation="h", y=-0.25), uirevision="learn-layout")
st.plotly_chart(fig, key="learn_layout", config=figures.chart_config("dlb-batch-layout"))
st.markdown(
    f"Each square is one training sample (its id inside). With **{budget}** budget a "
    f"DLB/DynSDPB step takes **{chunk} new** samples and re-feeds the **{chunk}** new ones of "
    f"the step before, so it forwards **{2 * chunk}** samples; vanilla forwards **{B}**. "
    "Every sample is seen twice in a row: first as *new* (its logits are kept), then as "
    "*carried* (pulled toward those kept logits). Step 1 has nothing to carry and uses CE "
    "only. The chain runs on across the epoch boundary, as in DLB's code. Text has no data "
    "augmentation, so the two passes differ only by dropout and one optimizer step.")
with st.expander("The same layout as a static picture (for slides)"):
    svg = (FIGURES / "dlb-batch-layout.svg").read_bytes()
    st.image(str(FIGURES / "dlb-batch-layout.svg"))
    st.download_button("Download the SVG", svg, "dlb-batch-layout.svg", mime="image/svg+xml",
                       key="btn_learn_layout_svg")

# =============================================================================================
st.header("2 · alpha and tau from uncertainty and margin")
st.markdown(
    "For every carried sample, the prediction recorded at the previous step, "
    "q = softmax(previous logits), gives two signals: the **uncertainty** "
    "u = H(q) / log C (0: sure, 1: uniform) and the **margin** d = q[gold] − max other q "
    "(+1: sure and right, −1: sure and wrong). The schedule turns them into that sample's "
    "distillation weight alpha and temperature tau.")

ss.setdefault("w_learn_sched", "dynsdpb-v1")
for k in ("alpha", "tau", "alpha_max", "tau_0", "tau_min", "tau_max"):
    ss.setdefault(f"w_learn_{k}", float(getattr(C.RunConfig(), k)))
ss.setdefault("w_learn_dir", "soften-uncertain")
ss.setdefault("w_learn_u", 0.4)
ss.setdefault("w_learn_d", 0.3)
ss.setdefault("w_learn_classes", 3)

s1, s2, s3, s4 = st.columns(4)
with s1:
    sched = st.selectbox("schedule", ["dynsdpb-v1", "static", "warmup", "linear"],
                         key="w_learn_sched", persist_state="session",
                         help=C.field_help("schedule"))
if sched == "dynsdpb-v1":
    with s2:
        st.slider("alpha_max", 0.0, 2.0, step=0.05, key="w_learn_alpha_max",
                  persist_state="session", help=C.field_help("alpha_max"))
        st.slider("tau_0", 0.5, 6.0, step=0.25, key="w_learn_tau_0", persist_state="session",
                  help=C.field_help("tau_0"))
    with s3:
        st.slider("tau_min", 0.5, 6.0, step=0.25, key="w_learn_tau_min", persist_state="session",
                  help=C.field_help("tau_min"))
        st.slider("tau_max", 1.0, 12.0, step=0.5, key="w_learn_tau_max", persist_state="session",
                  help=C.field_help("tau_max"))
    with s4:
        st.radio("tau_direction", list(C.TAU_DIRECTIONS), key="w_learn_dir",
                 persist_state="session", help=C.field_help("tau_direction"))
    cfg = C.RunConfig(method="dynsdpb", schedule="dynsdpb-v1", alpha_max=ss["w_learn_alpha_max"],
                      tau_0=ss["w_learn_tau_0"], tau_min=ss["w_learn_tau_min"],
                      tau_max=max(ss["w_learn_tau_max"], ss["w_learn_tau_min"]),
                      tau_direction=ss["w_learn_dir"])
    if ss["w_learn_tau_min"] > ss["w_learn_tau_max"]:
        st.warning("tau_min is above tau_max; the engine refuses that, so the picture uses "
                   "tau_max = tau_min.")

    p1, p2, p3 = st.columns(3)
    with p1:
        u0 = st.slider("uncertainty u", 0.0, 1.0, step=0.01, key="w_learn_u",
                       persist_state="session")
    with p2:
        d0 = st.slider("margin d", -1.0, 1.0, step=0.01, key="w_learn_d", persist_state="session")
    with p3:
        n_cls = st.slider("classes C (for the example dots)", 2, 10, key="w_learn_classes",
                          persist_state="session")
    a0, t0 = dyn_alpha_tau(cfg, torch.tensor([u0]), torch.tensor([d0]))
    a0, t0 = float(a0[0]), float(t0[0])
    m1, m2 = st.columns(2)
    m1.metric("alpha at (u, d)", f"{a0:.3f}")
    m2.metric("tau at (u, d)", f"{t0:.2f}")

    uu = np.linspace(0, 1, 51)
    dd = np.linspace(-1, 1, 81)
    U, D = np.meshgrid(uu, dd)
    A, T = dyn_alpha_tau(cfg, torch.tensor(U, dtype=torch.float32),
                         torch.tensor(D, dtype=torch.float32))
    # Where real predictions sit: random softmax outputs over C classes, gold label 0.
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(400, n_cls, generator=g) * torch.linspace(0.2, 4, 400).unsqueeze(1)
    su, sd = signals(logits, torch.zeros(400, dtype=torch.long))

    fig2 = make_subplots(rows=1, cols=2, column_widths=[0.55, 0.45], horizontal_spacing=0.16,
                         subplot_titles=("alpha(u, d)", "tau(u)"))
    fig2.add_trace(go.Heatmap(x=uu, y=dd, z=A.numpy(), colorscale="Reds", zmin=0,
                              zmax=max(cfg.alpha_max, 1e-6),
                              colorbar=dict(title="alpha", x=0.5, thickness=12, len=0.9),
                              hovertemplate="u %{x:.2f}<br>d %{y:.2f}<br>alpha %{z:.3f}"
                                            "<extra></extra>"), row=1, col=1)
    fig2.add_trace(go.Scatter(x=su.numpy(), y=sd.numpy(), mode="markers", name=f"random "
                              f"predictions, C = {n_cls}", marker=dict(size=4, color="#333",
                                                                      opacity=0.35)), row=1, col=1)
    fig2.add_trace(go.Scatter(x=[u0], y=[d0], mode="markers", name="(u, d) from the sliders",
                              marker=dict(size=14, symbol="x", color=common.METHOD_COLORS["dlb"],
                                          line=dict(width=2))), row=1, col=1)
    fig2.add_trace(go.Scatter(x=uu, y=T[0].numpy(), mode="lines", name="tau",
                              line=dict(color=common.METHOD_COLORS["dynsdpb"], width=3)),
                   row=1, col=2)
    fig2.add_trace(go.Scatter(x=[u0], y=[t0], mode="markers", showlegend=False,
                              marker=dict(size=14, symbol="x", color=common.METHOD_COLORS["dlb"],
                                          line=dict(width=2))), row=1, col=2)
    fig2.add_hline(y=cfg.tau_min, line=dict(dash="dot", color="#888"), row=1, col=2)
    fig2.add_hline(y=cfg.tau_max, line=dict(dash="dot", color="#888"), row=1, col=2)
    fig2.update_xaxes(title_text="uncertainty u", range=[0, 1])
    fig2.update_yaxes(title_text="margin d", range=[-1, 1], row=1, col=1)
    fig2.update_yaxes(title_text="tau", row=1, col=2)
    fig2.update_layout(height=420, margin=dict(l=10, r=10, t=40, b=10), template="plotly_white",
                       legend=dict(orientation="h", y=-0.2), uirevision="learn-at")
    st.plotly_chart(fig2, key="learn_alpha_tau", config=figures.chart_config("alpha-tau-u-d"))
    st.caption("Grey dots: where real predictions fall for C classes (not every (u, d) pair can "
               "occur: a sure prediction, u near 0, has d near +1 or −1). Early in training "
               "predictions are near uniform (u ≈ 1), so alpha ≈ 0 and the model mostly learns "
               "from the labels; as it becomes sure and right, alpha grows toward alpha_max.")
else:
    with s2:
        st.slider("alpha", 0.0, 2.0, step=0.05, key="w_learn_alpha", persist_state="session",
                  help=C.field_help("alpha"))
    with s3:
        st.slider("tau", 0.5, 8.0, step=0.25, key="w_learn_tau", persist_state="session",
                  help=C.field_help("tau"))
    with s4:
        ss.setdefault("w_learn_warm", 50)
        ss.setdefault("w_learn_steps", 200)
        st.number_input("steps", 2, 5000, key="w_learn_steps", persist_state="session")
        if sched == "warmup":
            st.number_input("warmup_alpha_steps", 0, 5000, key="w_learn_warm",
                            persist_state="session")
    cfg = C.RunConfig(method="dlb", schedule=sched, alpha=ss["w_learn_alpha"],
                      tau=ss["w_learn_tau"], alpha_max=ss["w_learn_alpha_max"],
                      steps=int(ss["w_learn_steps"]),
                      warmup_alpha_steps=int(ss.get("w_learn_warm", 50)))
    xs = list(range(cfg.steps))
    fig3 = go.Figure(go.Scatter(x=xs, y=[static_alpha(cfg, s) for s in xs], mode="lines",
                                line=dict(color=common.METHOD_COLORS["dlb"], width=3),
                                name="alpha"))
    fig3.update_layout(height=320, title=f"{sched}: alpha per step (same for every sample); "
                       f"tau = {cfg.tau} throughout", template="plotly_white",
                       margin=dict(l=10, r=10, t=40, b=10), uirevision="learn-static")
    fig3.update_xaxes(title_text="step")
    fig3.update_yaxes(title_text="alpha", rangemode="tozero")
    st.plotly_chart(fig3, key="learn_static", config=figures.chart_config("alpha-schedule"))
    st.caption("These schedules ignore u and d: every carried sample gets the same alpha and "
               "tau. They are the baselines DynSDPB is compared with.")

st.info(describe(cfg))

# =============================================================================================
st.header("3 · The formulas, and where they come from")
st.markdown("**Loss of one step** — *from the papers* (DLB, Shen et al. 2022; DynSDPB, Fu et al. "
            "2024):")
st.latex(r"L = \mathrm{CE}(\text{all samples of the step}) + \frac{1}{|\mathcal{C}|}"
         r"\sum_{i \in \mathcal{C}} \alpha_i\,\tau_i^2\,"
         r"\mathrm{KL}\!\left(q_i^{\tau_i} \,\|\, p_i^{\tau_i}\right),\quad "
         r"q_i^{\tau}=\mathrm{softmax}(z^{\text{prev}}_i/\tau),\ p_i^{\tau}="
         r"\mathrm{softmax}(z_i/\tau)")
st.caption("𝒞 = the carried half; z_prev was recorded one step earlier and gets no gradient. "
           "The τ² factor keeps the gradient's size independent of τ (Hinton et al.).")
st.markdown("**Signals** — *ours*: the DynSDPB paper says alpha and tau follow the model's "
            "uncertainty and discrimination, but does not publish the formulas in a form we "
            "could use. These are the project's (schedule `dynsdpb-v1`):")
st.latex(r"u_i = \frac{H(q_i)}{\log C},\qquad d_i = q_i[y_i] - \max_{c \neq y_i} q_i[c]")
st.latex(r"\alpha_i = \alpha_{\max}\cdot\mathrm{clip}\!\left(\frac{(1-u_i)(1+d_i)}{2},0,1\right),"
         r"\qquad \tau_i = \mathrm{clip}\big(\tau_0\,(1+u_i),\ \tau_{\min},\ \tau_{\max}\big)")
st.caption("tau_direction = sharpen-uncertain uses τ₀ (1 − u/2) instead. granularity = batch "
           "uses the mean u and d of the carried half for all its samples.")
st.dataframe([
    {"piece": "overlapping batches, carried half re-fed", "source": "paper (DLB)"},
    {"piece": "KD loss α·τ²·KL(q_prev ‖ p) on the carried half", "source": "paper (DLB, DynSDPB)"},
    {"piece": "fixed alpha, tau (dlb / static)",
     "source": "paper (DLB); defaults 0.5 / 3 are ours"},
    {"piece": "alpha, tau adapt to uncertainty and discrimination",
     "source": "paper (DynSDPB): the idea"},
    {"piece": "u, d, alpha_i, tau_i formulas (dynsdpb-v1)", "source": "ours"},
    {"piece": "warmup and linear schedules", "source": "ours (ablations; linear as in PS-KD)"},
    {"piece": "regression KD term α_i (ŷ − ŷ_prev)²", "source": "ours"},
    {"piece": "probe drift (every arm, at evaluations)", "source": "ours"},
], hide_index=True, width="stretch")

# =============================================================================================
st.header("4 · Decoders: token-level distillation")
st.markdown(
    "A decoder (causal LM, e.g. `smollm2-135m`) learns to write a **target** text after a "
    "**prompt**. The batch layout is the same as above, with sequences instead of sentences; "
    "what changes is *where* the loss is taken:\n"
    "- **Target tokens only.** The prompt (and padding) carry the label −100: no CE and no KD "
    "there. Teacher forcing: the model reads prompt + target and predicts every target token.\n"
    "- **The causal shift.** The logits at position j predict token j + 1, so the labels move "
    "one to the left before any loss (`decoder.loss.causal_shift`, the one place that shifts).\n"
    "- **Per-sequence alpha and tau.** u and d are computed per target token from the cached "
    "prediction; alpha_i and tau_i then come from their **mean over the sequence's target "
    "tokens** (granularity `token`: one pair per token instead).")
st.latex(r"L = \mathrm{CE}(\text{target tokens of every sequence}) + \frac{1}{|K|}"
         r"\sum_{(i,t) \in K} \alpha_i\,\tau_i^2\,"
         r"\mathrm{KL}\!\left(q_{i,t}^{\tau_i} \,\|\, p_{i,t}^{\tau_i}\right),\qquad "
         r"\alpha_i,\tau_i = f\big(\bar u_i, \bar d_i\big),\ \ \bar u_i = \tfrac{1}{T_i}"
         r"\textstyle\sum_t u_{i,t}")
st.caption("K = the distilled tokens: target tokens of the carried sequences, on the aligned "
           "prefix below. f is the dynsdpb-v1 rule of §3, with C = the vocabulary size.")
st.image(str(FIGURES / "token-kd-alignment.svg"))
st.download_button("Download the SVG", (FIGURES / "token-kd-alignment.svg").read_bytes(),
                   "token-kd-alignment.svg", mime="image/svg+xml", key="btn_learn_token_svg")

st.subheader("The output-alignment rule")
st.markdown(
    "Each cache entry keeps the **target token ids it was computed on**. At the next step KD "
    "is taken only on the **longest common prefix** of those ids and the current target ids: "
    "after the first difference the cached prediction was made for another text, so it is "
    "no teacher for this one. In plain fine-tuning the targets never change and every target "
    "token is distilled (`aligned_tokens` counts them, `dropped_tokens` is 0); it matters when "
    "targets are regenerated between steps (self-training). *The paper names the problem; the "
    "rule is ours.*")

st.subheader("The top-k teacher cache")
st.markdown(
    "Keeping the previous step's full prediction costs the vocabulary size per target token "
    "(49,152 for SmolLM2: 98 kB in fp16, per token). The default cache (`kd_cache = topk`, "
    "`top_k = 64`) keeps per target token the **k largest teacher log-probs at tau_i, their "
    "ids, and the log of the remaining mass**. KD is then the exact KL between the two "
    "distributions **coarsened to k + 1 bins {top-k tokens, rest}**, the student side taken "
    "from its full softmax at the same tau_i. With k = vocabulary it is the full KL; below, "
    "it can only be smaller (merging bins never increases a KL).")
st.latex(r"\mathrm{KL}_k = \sum_{j \in \text{top-}k} q_j \log\frac{q_j}{p_j} + q_{\text{rest}}"
         r"\log\frac{q_{\text{rest}}}{p_{\text{rest}}} \ \le\ \mathrm{KL}(q\,\|\,p)")
st.markdown(
    "**Why it is weak at high tau.** A temperature spreads the mass over the whole "
    "vocabulary. Measured with SmolLM2-135M on the target tokens of 16 arith-easy examples "
    "(39 tokens), the share of the mass in the top 64 of 49,152 tokens:")
# Measured once (2026-11, 2-core CPU): decoder.models.load_causal_lm("smollm2-135m"), the first 16
# training rows of load_lm_splits("arith-easy", 0, 32, 4, 4) encoded with max_len 64, logits at
# the shifted target positions, softmax(z / tau).topk(64).sum() averaged over the 39 tokens.
st.dataframe([{"tau": t, "top-64 mass (mean over tokens)": f"{m:.1f} %"}
              for t, m in ((1.0, 93.6), (2.0, 23.4), (3.0, 5.8), (3.6, 3.3), (4.5, 1.8),
                           (6.0, 1.0))], hide_index=True)
st.caption("At tau ~ 3.6 (dynsdpb-v1 gives tau_0 (1 + u), so 3 to 6) the top 64 hold ~3% of "
           "the mass: the coarsened KL sees mostly how much goes to 'rest', little of the shape "
           "inside it. Use kd_cache = full (fp16 logits, 2 bytes x vocabulary per target token) "
           "where that matters, or a schedule with tau near 1. Each step logs the cache's bytes "
           "(kd_cache_bytes).")

# =============================================================================================
st.header("5 · Where the gain comes from")
st.markdown(
    "A distilling arm trains on more than a distillation term: DLB's layout also **re-feeds** "
    "the carried half, so those samples get a second CE pass. The **refeed** arm is the "
    "control: the same layout, the same views, the same data order, with alpha = 0. Paired by "
    "seed, a distilling arm's gain over vanilla splits into two parts:")
st.latex(r"\underbrace{\text{arm} - \text{vanilla}}_{\text{gain}} = "
         r"\underbrace{(\text{refeed} - \text{vanilla})}_{\text{re-feed part}} + "
         r"\underbrace{(\text{arm} - \text{refeed})}_{\text{distillation part}}")
st.markdown(
    "With **views** on (`augment`), every forward of a sample sees its own augmented version, "
    "so the carried half is distilled toward what the model said about *another view* one "
    "step earlier: a consistency target, as in DLB's image experiments. Without views the "
    "teacher saw the same tokens, and teacher and student differ only by dropout and one "
    "update.")
_verdict = gain.load(ASSETS / "results" / "distillation-regime.json")
if _verdict:
    _s = _verdict["summary"]
    _n = len(_s["methods"].get("vanilla", {}).get("seeds", []))
    st.plotly_chart(gain.figure(_s, f"{_verdict['setting']}: {_n} seeds, "
                                    f"{_verdict['test_items']} test items each"),
                    key="learn_gain", width="stretch")
    st.caption(_verdict["reading"] + f" Measured with `{_verdict['command']}` "
               "(docs/results.md). Grey bars: the 95% interval contains 0, so these seeds "
               "cannot tell that part from no effect.")
