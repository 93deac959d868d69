"""Is this browser tab hidden? Pages that poll stop polling while it is.

A tab nobody looks at (another tab in front, a minimised window) still had its fragments rerun
every second on the server and redrawn in the browser: on the 2-core machine that trains,
each such tab took CPU from the training. This component reports the tab's
`document.visibilityState`; a change reruns the page, which then polls (run_every) only while
the tab is visible. When the tab is shown again, that rerun draws the latest state at once.
"""
from __future__ import annotations

import streamlit as st

_JS = """
export default function (component) {
  const { setStateValue } = component;
  // one listener per page; it always calls the latest setStateValue
  window.__dynsdpbSetHidden = setStateValue;
  const send = () => {
    const hidden = document.visibilityState === "hidden";
    if (window.__dynsdpbHiddenSent === hidden) return;
    window.__dynsdpbHiddenSent = hidden;
    window.__dynsdpbSetHidden("hidden", hidden);
  };
  if (!window.__dynsdpbVisibility) {
    window.__dynsdpbVisibility = send;
    document.addEventListener("visibilitychange", send);
  }
  // a page opened in the background starts hidden; one opened in front sends nothing
  if (document.visibilityState === "hidden") send();
  else if (window.__dynsdpbHiddenSent === undefined) window.__dynsdpbHiddenSent = false;
  return () => {
    document.removeEventListener("visibilitychange", window.__dynsdpbVisibility);
    window.__dynsdpbVisibility = undefined;
    window.__dynsdpbHiddenSent = undefined;
  };
}
"""

_component = st.components.v2.component("dynsdpb.visibility", js=_JS, isolate_styles=False)


def tab_hidden(key: str) -> bool:
    """True while this page's browser tab is hidden (as the browser reports it)."""
    result = _component(key=key, default={"hidden": False}, on_hidden_change=lambda: None)
    return bool(getattr(result, "hidden", False))
