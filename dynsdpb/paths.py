"""Where the workbench's files that are not the engine live: app/, pages/, assets/.

In a checkout they are the top-level folders next to dynsdpb/. A non-editable install
(`pip install .`) ships the same three folders inside the package, as
dynsdpb/_workbench/{app,pages,assets} (pyproject.toml's package-dir map), so that
`dynsdpb app` serves the whole workbench from any folder.
"""
from pathlib import Path

_PKG = Path(__file__).resolve().parent
_INSTALLED = _PKG / "_workbench"
ROOT = _INSTALLED if (_INSTALLED / "app" / "main.py").is_file() else _PKG.parent
APP_MAIN = ROOT / "app" / "main.py"
PAGES = ROOT / "pages"
ASSETS = ROOT / "assets"
