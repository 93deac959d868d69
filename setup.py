"""The one build step pyproject.toml cannot state: ship plotly.js with the app.

The Live page's charts load plotly.min.js from Streamlit's static serving (app/static/). In a
checkout app/livechart.py copies it there from the plotly package at first use; an installed
package may be read-only, so the wheel carries the file, copied here at build time.
"""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPy(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return          # an editable install serves the checkout's app/static
        import plotly
        src = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
        dst = Path(self.build_lib, "dynsdpb", "_workbench", "app", "static", "plotly.min.js")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)


setup(cmdclass={"build_py": BuildPy})
