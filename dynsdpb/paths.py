"""Where the workbench's files that are not the engine live: app/, pages/, assets/.

In a checkout they are the top-level folders next to dynsdpb/. A non-editable install
(`pip install .`) ships the same three folders inside the package, as
dynsdpb/_workbench/{app,pages,assets} (pyproject.toml's package-dir map), so that
`dynsdpb app` serves the whole workbench from any folder.
"""
import importlib.util
from pathlib import Path

_PKG = Path(__file__).resolve().parent
_INSTALLED = _PKG / "_workbench"
ROOT = _INSTALLED if (_INSTALLED / "app" / "main.py").is_file() else _PKG.parent
APP_MAIN = ROOT / "app" / "main.py"
# What `dynsdpb app` serves: app/main.py plus the live feed's routes (app/server.py).
APP_SERVER = ROOT / "app" / "server.py"
PAGES = ROOT / "pages"
ASSETS = ROOT / "assets"


def pkg_dir(name: str) -> Path | None:
    """Folder of an installed package, without importing it (find_spec reads its location without
    executing its __init__: some data/model packages print or pull heavy dependencies on import)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])
