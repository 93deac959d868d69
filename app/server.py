"""The workbench's server: the Streamlit app of app/main.py plus the live feed's JSON routes
(app/feed.py), which the status blocks and charts of Live and Self-training fetch while a run
trains instead of rerunning the page. `dynsdpb app` runs this file; `streamlit run app/main.py`
still works, and its pages then poll by rerunning (more browser CPU per open tab, nothing else
missing).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))     # `app.feed` etc., as app/main.py does

import streamlit as st

from app import feed

os.environ[feed.ENV] = "1"     # the pages of this process may use the feed

app = st.App(HERE / "main.py", routes=feed.routes())
