"""DynSDPB Workbench: the Streamlit entry point (`dynsdpb app`, `scripts/run.sh`).

It runs on every rerun as the shared frame of all pages: page config, the job manager, the
sidebar status, then the page chosen in the navigation.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    # `streamlit run app/main.py` puts app/ on sys.path; pages import `app.common` etc.
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from app import common, progress, views  # noqa: E402

st.set_page_config(page_title="DynSDPB Workbench", page_icon=":material/science:", layout="wide")

# The Setup form keeps its values for the browser session through its widgets'
# persist_state="session" (pages/setup.py), not by re-assigning keys here on every rerun.

PAGES = ROOT / "pages"
SETUP = st.Page(PAGES / "setup.py", title="Setup", icon=":material/tune:", url_path="setup")


def _home() -> None:
    """The app's root URL opens Setup. Setup itself must not be the default page: a default
    page is served only at "/", so /setup opened in a new tab got a "Page not found" dialog
    that left the page inert under it."""
    st.switch_page(SETUP)


nav = st.navigation([
    st.Page(_home, title="Home", url_path="home", default=True, visibility="hidden"),
    SETUP,
    st.Page(PAGES / "live.py", title="Live", icon=":material/monitoring:", url_path="live"),
    st.Page(PAGES / "compare.py", title="Compare", icon=":material/compare_arrows:",
            url_path="compare"),
    st.Page(PAGES / "runs.py", title="Runs", icon=":material/folder_open:", url_path="runs"),
    st.Page(PAGES / "selftrain.py", title="Self-training", icon=":material/autorenew:", url_path="selftrain"),
    st.Page(PAGES / "learn.py", title="Learn", icon=":material/school:", url_path="learn"),
])

if (problem := common.check_runs_dir()) is not None:
    st.error(problem, icon=":material/folder_off:")   # one line instead of every page's error
    st.stop()
jm = common.manager()
with st.sidebar:
    cur = jm.current()
    queued = jm.queue()
    if cur:
        st.markdown(f"**Training:** {views.job_label(jm, cur)}")
    else:
        st.markdown("**Training:** idle")
    if queued:
        # the same count and words as the queue box on Live (both read jm.queue())
        st.markdown(f"**Queue:** {progress.waiting_words(len(queued))}")
    st.caption(f"Runs directory: `{jm.runs_dir}`")

if "flash" in st.session_state:     # a message from an action that reran the app
    st.toast(st.session_state.pop("flash"))

nav.run()
