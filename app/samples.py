"""What decoders log, shown: a carried sample's target tokens coloured by the alpha (or KD)
each got, and the latest sample generations of each arm as one table.
"""
from __future__ import annotations

import math

from app.common import rgba
from app.views import ArmView


# ---------------------------------------------------------------------------------------
# A carried sample's target tokens coloured by the alpha (or KD) each got (Live, Runs).

TOKEN_SHOW = {"alpha": "alpha (KD weight)", "kd": "KD term (nats)"}
_NO_TEACHER = "#e6e6e6"


def _esc_token(t: str) -> str:
    """A token as HTML text that nothing re-interprets: every character but letters and
    digits as a numeric entity (so <, &, Markdown's * _ ` $ and :emoji: stay literal);
    spaces visible as ·, newlines as ↵."""
    out = []
    for c in t:
        if c == " ":
            out.append("&middot;")
        elif c == "\n":
            out.append("&#8629;")
        elif c.isalnum() and c.isascii():
            out.append(c)
        else:
            out.append(f"&#{ord(c)};")
    return "".join(out)


def _shade(v: float, vmax: float, color: str) -> str:
    a = 0.0 if vmax <= 0 else max(0.0, min(1.0, v / vmax))
    return rgba(color, 0.08 + 0.82 * a)


def tokens_html(view: dict, show: str = "alpha", vmax: float | None = None,
                color: str = "#d62728", legend: bool = True) -> str:
    """One tokens.jsonl record as coloured spans (white = 0 -> `color` = vmax) with a legend.
    Tokens without a teacher (not in the aligned prefix) are grey. Token text is escaped."""
    toks = view.get("tokens") or []
    vals = view.get(show) or []
    alphas, kds = view.get("alpha") or [], view.get("kd") or []
    finite = [v for v in vals if isinstance(v, (int, float)) and math.isfinite(v)]
    if vmax is None:
        vmax = max(finite) if finite else 0.0
    spans = []
    for i, t in enumerate(toks):
        v = vals[i] if i < len(vals) else None
        a = alphas[i] if i < len(alphas) else None
        k = kds[i] if i < len(kds) else None
        tip = "".join(c if c.isalnum() and c.isascii() else f"&#{ord(c)};" for c in (
            f"{t!r}: alpha {'—' if a is None else f'{a:.4g}'}, "
            f"KD {'—' if k is None else f'{k:.4g}'} nats"))
        bg = _NO_TEACHER if v is None else _shade(float(v), vmax, color)
        spans.append(f"<span class='dyn-tok' title='{tip}' style='background:{bg};"
                     "padding:2px 3px;margin:1px;border-radius:3px;display:inline-block;"
                     f"font-family:monospace'>{_esc_token(str(t))}</span>")
    prompt = view.get("prompt")
    if prompt:
        # the prompt, greyed: no loss and no KD there (runs before this record kept no prompt)
        spans.insert(0, "<span class='dyn-prompt' title='prompt: no loss, no KD' "
                     "style='color:#999;font-family:monospace;margin-right:4px'>"
                     + _esc_token(prompt_tail(prompt, 240)) + "</span>")
    body = "<div style='line-height:2'>" + "".join(spans) + "</div>"
    return body + (token_legend(show, vmax, color) if legend else "")


def token_legend(show: str, vmax: float, color: str = "#d62728") -> str:
    import html as _html
    label = _html.escape(TOKEN_SHOW.get(show, show))
    return (f"<div style='font-size:0.8em;color:#555;margin-top:4px'>{label}: "
              f"<span style='background:{_shade(0, 1, color)};padding:0 6px'>0</span>"
              f"<span style='display:inline-block;width:120px;height:0.9em;vertical-align:middle;"
              f"background:linear-gradient(to right,{_shade(0, 1, color)},{_shade(1, 1, color)})'>"
              f"</span><span style='background:{_shade(1, 1, color)};padding:0 6px'>"
              f"{vmax:.3g}</span> &nbsp; <span style='background:{_NO_TEACHER};padding:0 6px'>"
              "no teacher</span> (not in the aligned prefix) &nbsp; · = space, &#8629; = "
              "newline</div>")


def token_scale(views: list[dict], show: str, arms: list[ArmView] | None = None) -> float:
    """One colour scale for several arms' tokens: alpha up to the largest alpha any of the
    arms can give (alpha_max, or dlb's alpha), KD up to the largest value shown."""
    vals = [v for view in views for v in (view.get(show) or [])
            if isinstance(v, (int, float)) and math.isfinite(v)]
    top = max(vals) if vals else 0.0
    if show == "alpha":
        caps = [float(a.cfg.get("alpha_max" if a.method == "dynsdpb" else "alpha") or 0)
                for a in arms or []]
        top = max([top, *caps]) or 1.0
    return top


PROMPT_TAIL = 90   # characters: a prompt's end holds the question and its numbers


def prompt_tail(prompt: str, n: int = PROMPT_TAIL) -> str:
    """The end of a prompt, where the question is ('…what is 7 plus 8?'): long prompts start
    with an instruction, and a table cut at its width hid the numbers."""
    prompt = " ".join(prompt.split())
    return prompt if len(prompt) <= n else "…" + prompt[-(n - 1):]


def sample_rows(arms: list[ArmView], step: int | None = None) -> list[dict]:
    """The latest sample generations of each arm, one table: the same prompts of every arm
    next to each other, correct (flexible) and strict as ✓/✗, answers named as everywhere
    (gold answer, model's answer), a generation cut off at max_new_tokens marked (samples
    record `truncated`; older files `cut_off`). `step`: that evaluation's generations instead
    of the latest."""
    rows = []
    for a in arms:
        for r in (a.latest_samples() if step is None
                  else [r for r in a.samples if r.get("step") == step]):
            rows.append({"prompt (end)": prompt_tail(str(r.get("prompt", ""))), "run": a.id,
                         "step": r.get("step"),
                         "model's answer": "—" if r.get("extracted") is None
                         else str(r["extracted"]),
                         "gold answer": "—" if r.get("gold") is None else str(r["gold"]),
                         "correct": "✓" if r.get("correct") else "✗",
                         "strict": ("—" if r.get("strict_correct") is None
                                    else "✓" if r["strict_correct"] else "✗"),
                         # its own column: a mark at the end of a long generation was hidden
                         "cut off": "✂ cut off" if r.get("truncated", r.get("cut_off"))
                         else "",
                         "generation": str(r.get("generation", ""))})
    order = list(dict.fromkeys(r["prompt (end)"] for r in rows))
    rows.sort(key=lambda r: order.index(r["prompt (end)"]))
    return rows


def sample_steps(arms: list[ArmView]) -> dict[str, int]:
    """The step of each arm's latest evaluation with samples (they differ while arms run)."""
    out = {}
    for a in arms:
        got = a.latest_samples()
        if got:
            out[a.id] = got[0].get("step")
    return out
