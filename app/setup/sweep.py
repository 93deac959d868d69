"""Setup's sweep expander: the experiment above run over a grid of fields (dynsdpb/sweep/spec.py)."""
from __future__ import annotations

import streamlit as st

from app import common
from app.setup.form import problem_text
from dynsdpb import config as C
from dynsdpb.errors import ConfigError

ss = st.session_state


def draw_sweep(cfg: C.RunConfig, methods: list[str], seeds: list[int], n_problems: int) -> None:
    """A grid of fields around the config above (dynsdpb/sweep/spec.py): each cell runs the methods
    x seeds chosen above; baselines that do not read a swept field run once. The runs are
    queued (Live shows the queue); Compare draws the gain per cell as a heatmap."""
    with st.expander("Sweep: run this experiment over a grid"):
        st.text_area("grid: one field per line, NAME=v1,v2,...",
                     "alpha_max=0.5,1,2\nlr=2e-5,5e-5", key="w_sweep_grid", height=80)
        st.text_input("sweep name", key="w_sweep_name", placeholder="e.g. alpha-x-lr")
        if st.button("Queue the sweep", key="btn_sweep", disabled=bool(n_problems)):
            import time
            from dynsdpb.sweep import spec as SW
            from dynsdpb.sweep import run as SX
            from dynsdpb.store import safe_name
            try:
                grid = SW.parse_grid([ln for ln in ss["w_sweep_grid"].splitlines()
                                      if ln.strip()])
                name = str(ss["w_sweep_name"]).strip() or time.strftime("sweep-%Y%m%d-%H%M%S")
                folder = common.runs_dir() / safe_name(name)
                SW.create_sweep(folder, cfg, methods, seeds, grid=grid, name=name)
                ids = SX.queue_grid(common.manager(), folder)
            except ConfigError as e:
                for p in e.problems:
                    st.error(problem_text(p), icon=":material/warning:")
            else:
                st.success(f"Queued {len(ids)} runs for {len(SW.expand_grid(grid))} cells in "
                           f"`{folder.name}`; see Live for the queue and Compare for the heatmap.")
