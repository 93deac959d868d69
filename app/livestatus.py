"""Live's status block (state, progress, the latest step, the runs table) as data, and the two
ways it is drawn: Streamlit elements on each rerun, or one HTML block that updates itself.

`status_view` computes what the block says, once, for both. Under the workbench's server
(app/server.py) the block is one small component that fetches `status_html` from the server's
live feed (app/feed.py) every common.STATUS_EVERY seconds and replaces its HTML: no Streamlit
rerun while a run trains. A rerun of a Streamlit fragment, even one that draws nothing new,
cost a visible tab 30-45 ms of browser CPU (measured in Chromium), taken from the training on
the same machine. The page reruns only when what it draws around the block changes (the
state, the queue, a failure): `status_view`'s "key". Elsewhere (AppTest, a plain
`streamlit run app/main.py`) the page draws the same view with Streamlit elements and polls.
"""
from __future__ import annotations

import html
import time

import streamlit as st

from app import common, progress, tables, views

STATE_HTML = {"gray": ("#555", "rgba(151,166,195,0.25)"), "blue": ("#1c5fa8", "#e0ecfb"),
              "green": ("#177245", "#dcf5e5"), "orange": ("#9a5b00", "#fdebd0"),
              "red": ("#a61b1b", "#fbe0e0")}


def status_view(jm, exp_id: str, arms: list[views.ArmView]) -> dict:
    """What the status block says about experiment `exp_id` (its arms as read now), and its
    `key`: what the page draws around the block depends on nothing else."""
    from dynsdpb.records import axis_title
    info = progress.progress_info(arms)
    state = views.exp_state([a.state for a in arms])
    job = views.job_of_exp(exp_id)
    words = list(progress.progress_words(info))
    if info["samples_per_s"]:
        words.append(f"{info['samples_per_s']:.1f} samples/s per arm")
    if state == "running" and not info["latest"] and "loading…" not in words:
        words.append("loading the model and data…")
    queue = jm.queue()
    if job in queue:
        words.append(f"waiting in the queue (position {queue.index(job) + 1})")
    frac = info["done"] / info["total"] if info["total"] else 0.0
    if state != "finished":
        frac = min(frac, 0.99)   # 100% only when the run has really finished
    latest = info["latest"]
    if latest:
        a, r = latest
        caption = (f"latest step {r.get('step')} of {a.id} written at "
                   f"{progress.fmt_clock(r.get('time'))}; page updated "
                   f"{progress.fmt_clock(time.time())}")
    else:
        caption = "no step records yet"
    val_key = views.primary_val_metric(arms)
    rows = []
    for a in arms:
        last = a.records[-1] if a.records else {}
        val = next((r.get(val_key) for r in reversed(a.records) if r.get(val_key) is not None),
                   None)
        step, steps = progress.arm_steps(a)
        sps = progress.samples_per_s(a)
        # cells as text: "—" where a value does not apply (vanilla has no alpha), never None
        rows.append({"run": a.id, "state": progress.arm_phase(a), "step": f"{step}/{steps}",
                     "loss": tables.cell("loss", last.get("loss")),
                     "alpha": tables.cell("alpha", last.get("alpha")),
                     "tau": tables.cell("tau", last.get("tau")),
                     axis_title(val_key): tables.cell(val_key, val),
                     "samples/s": "—" if sps is None else f"{sps:.1f}"})
    key = repr((state, tuple(a.state for a in arms), tuple(queue),
                views.exp_of_job(jm, jm.current()), jm.is_active(),
                tuple(a.status.get("error") for a in arms)))
    return {"state": state, "words": words, "frac": frac, "caption": caption, "rows": rows,
            "key": key}


def badge_html(state: str) -> str:
    """A coloured state word, as common.state_badge draws it in Streamlit."""
    fg, bg = STATE_HTML.get(common.STATE_COLORS.get(state, "gray"), STATE_HTML["gray"])
    return (f"<span style='color:{fg};background:{bg};border-radius:0.5rem;"
            f"padding:0.05rem 0.45rem;font-size:0.875rem'>{html.escape(state)}</span>")


def status_html(view: dict) -> str:
    """The status block as one piece of HTML (what the feed sends)."""
    e = html.escape
    line = " · ".join([badge_html(view["state"]), *map(e, view["words"])])
    help_ = ("Step records are written by the training process; this block re-reads them "
             f"every {common.STATUS_EVERY:g} s.")
    return (f"<div class='dynsdpb-status'><p style='margin:0 0 0.5rem 0'>{line}</p>"
            + progress.bar_html(view["frac"], "training progress")
            + f"<p title='{e(help_)}' style='margin:0.5rem 0;font-size:0.875rem;"
              f"color:rgba(49,51,63,0.6)'>{e(view['caption'])}</p>"
            + table_html(view["rows"]) + "</div>")


def table_html(rows: list[dict]) -> str:
    """Rows of cells as a plain HTML table (the block's CSS styles it); None shows as "—"."""
    e = html.escape
    head = "".join(f"<th>{e(str(k))}</th>" for k in rows[0]) if rows else ""
    body = "".join("<tr>" + "".join(f"<td>{e('—' if v is None else str(v))}</td>"
                                    for v in r.values()) + "</tr>" for r in rows)
    return ("<table style='width:100%;border-collapse:collapse;font-size:0.875rem'>"
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


_CSS = """
.dynsdpb-status th, .dynsdpb-status td { text-align: left; padding: 0.3rem 0.5rem;
  border-bottom: 1px solid rgba(49,51,63,0.1); font-weight: normal; }
.dynsdpb-status th { color: rgba(49,51,63,0.6); }
"""

_JS = """
export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  let box = parentElement.querySelector(".dynsdpb-status-host");
  if (!box) {
    box = document.createElement("div");
    box.className = "dynsdpb-status-host";
    parentElement.appendChild(box);
  }
  const stats = window.__dynsdpbStatus || (window.__dynsdpbStatus = { fetches: 0, changed: 0 });
  const show = (html) => { if (box.__html !== html) { box.innerHTML = html; box.__html = html; } };
  show(data.html);
  box.__key = data.key;
  if (box.__timer) { clearInterval(box.__timer); box.__timer = null; }
  if (box.__onvis) document.removeEventListener("visibilitychange", box.__onvis);
  if (!data.url) return;
  let busy = false;
  const poll = async () => {
    // a hidden tab asks for nothing; it catches up as soon as it is shown
    if (busy || document.visibilityState === "hidden" || !box.isConnected) return;
    busy = true;
    try {
      const r = await fetch(data.url, { cache: "no-store" });
      if (!r.ok) return;
      const d = await r.json();
      stats.fetches += 1;
      show(d.html);
      if (d.key !== box.__key) {
        // the state or the queue changed: the page redraws what is around
        box.__key = d.key;
        stats.changed += 1;
        // when the page was told to rerun, and why (browser tests read it; the last 20)
        const keys = stats.keys || (stats.keys = []);
        keys.push([Date.now() / 1000, d.key]);
        if (keys.length > 20) keys.shift();
        setTriggerValue("changed", d.key);
      }
    } catch (e) {
      // the server is restarting: the next poll tries again
    } finally {
      busy = false;
    }
  };
  // no timer while the tab is hidden: it would wake the machine for nothing
  const sync = () => {
    const want = document.visibilityState !== "hidden";
    if (want && !box.__timer) box.__timer = setInterval(poll, data.every * 1000);
    if (!want && box.__timer) { clearInterval(box.__timer); box.__timer = null; }
  };
  box.__onvis = () => { sync(); poll(); };
  document.addEventListener("visibilitychange", box.__onvis);
  sync();
  return () => {
    if (box.__timer) clearInterval(box.__timer);
    box.__timer = null;
    document.removeEventListener("visibilitychange", box.__onvis);
  };
}
"""

_component = st.components.v2.component("dynsdpb.live_status", js=_JS, css=_CSS,
                                        isolate_styles=False)


def _changed() -> None:
    """The feed saw the state, the queue or a failure change: the page reruns (the block is
    drawn outside any fragment)."""


def feed_block(name: str, html_: str, key: str, url: str | None) -> None:
    """A block of HTML that replaces itself with what `url` (a status route of app/feed.py:
    {"html", "key"}) answers every common.STATUS_EVERY seconds while `url` is given; the page
    reruns when the key changes. `name`: the component's key in the page."""
    _component(key=name, data={"html": html_, "key": key, "url": url,
                               "every": common.STATUS_EVERY},
               on_changed_change=_changed)


def live_status_block(view: dict, url: str | None) -> None:
    """Live's status block, updating itself from the feed's status route `url`."""
    feed_block("live_status_block", status_html(view), view["key"], url)
