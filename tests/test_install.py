"""A non-editable install serves the whole workbench from any folder, read-only.

`pip install --no-deps --target` builds the wheel from a copy of this working tree (no
network: the venv's setuptools and plotly build it) into a temporary folder, which is made
read-only. From another folder, with only that folder on PYTHONPATH (not the repo):
`dynsdpb app` answers /_stcore/health and serves the plotly.js the wheel ships (static
serving is switched on only by app/.streamlit/config.toml, so this also shows the app's
settings apply outside the repo), and every page runs from the installed files.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from dynsdpb.bench.app import free_port, stop_server

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def _tree_files() -> list[str]:
    """Tracked and untracked-but-not-ignored files: what the working tree would ship."""
    out = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, check=True).stdout.decode()
    return [f for f in out.split("\0") if f and (ROOT / f).is_file()]


def _set_writable(path: Path, writable: bool) -> None:
    for p in [path, *path.rglob("*")]:
        if p.is_symlink():
            continue
        mode = p.stat().st_mode
        w = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
        p.chmod(mode | stat.S_IWUSR if writable else mode & ~w)


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.read()


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("install")
    src, site = tmp / "src", tmp / "site"
    for f in _tree_files():
        if f.startswith(("tests/", "docs/")):
            continue
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, src / f)
    assert not (src / "app" / "static" / "plotly.min.js").exists()   # the build must add it
    t0 = time.time()
    r = subprocess.run([PY, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--no-index", "--target", str(site), str(src)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    print(f"\npip install --target: {time.time() - t0:.1f} s")
    _set_writable(site, False)
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", DYNSDPB_RUNS_DIR=str(tmp / "runs"),
               PYTHONDONTWRITEBYTECODE="1")
    yield site, elsewhere, env
    _set_writable(site, True)


def test_installed_package_is_the_one_imported(installed):
    site, elsewhere, env = installed
    r = subprocess.run([PY, "-c", "import sys, dynsdpb, dynsdpb.paths as P; "
                        "print(dynsdpb.__file__); print(P.APP_MAIN); print(P.ASSETS); "
                        f"print(any(p.rstrip('/') == {str(ROOT)!r} for p in sys.path))"],
                       cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    mod, main, assets, repo_on_path = r.stdout.split()
    assert Path(mod).is_relative_to(site) and Path(main).is_relative_to(site)
    assert (Path(assets) / "presets" / "quick-demo.yaml").is_file()
    assert repo_on_path == "False"
    shipped = site / "dynsdpb" / "_workbench"
    for rel in ["app/main.py", "app/.streamlit/config.toml", "app/static/plotly.min.js",
                "pages/setup.py", "pages/learn.py", "assets/presets/paper-equal-epochs.yaml"]:
        assert (shipped / rel).is_file(), rel
    assert not os.access(shipped / "app" / "static", os.W_OK) or os.geteuid() == 0


def test_dynsdpb_app_serves_from_another_folder(installed):
    site, elsewhere, env = installed
    port = free_port()
    log = open(elsewhere.parent / "server.log", "wb")
    proc = subprocess.Popen([str(site / "bin" / "dynsdpb"), "app", "--server.port", str(port)],
                            cwd=elsewhere, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        t0, up = time.time(), False
        while time.time() - t0 < 90 and proc.poll() is None:
            try:
                up = _get(base + "/_stcore/health")[1] == b"ok"
                break
            except OSError:
                time.sleep(0.3)
        assert up, (elsewhere.parent / "server.log").read_text()[-3000:]
        print(f"\ninstalled app healthy after {time.time() - t0:.1f} s")
        status, js = _get(base + "/app/static/plotly.min.js")
        assert status == 200
        assert js == (site / "dynsdpb/_workbench/app/static/plotly.min.js").read_bytes()
        for page in ("setup", "live", "compare", "runs", "learn"):
            status, html = _get(f"{base}/{page}")
            assert status == 200 and b"<div id=\"root\">" in html
        # the live feed's routes (app/server.py) are served too: an unknown experiment is
        # its one-line 404, not Streamlit's page
        import urllib.error
        with pytest.raises(urllib.error.HTTPError) as e:
            _get(base + "/_dynsdpb/live/status?exp=nope")
        assert e.value.code == 404 and json.loads(e.value.read()) == {
            "error": "no such experiment"}
    finally:
        stop_server(proc)
        log.close()
    # `dynsdpb app` is the server itself: stopping it frees the port (a server left behind
    # as an orphan child would still answer)
    t0 = time.time()
    while time.time() - t0 < 10:
        try:
            _get(base + "/_stcore/health")
        except OSError:
            break
        time.sleep(0.3)
    else:
        raise AssertionError("the app still answers after `dynsdpb app` was stopped")


PAGES_SCRIPT = r"""
import sys
from pathlib import Path
from streamlit.testing.v1 import AppTest
import dynsdpb.paths as P
at = AppTest.from_file(str(P.APP_MAIN), default_timeout=60).run()
assert not at.exception, [e.value for e in at.exception]
for page in sorted(P.PAGES.glob("*.py")):
    at.switch_page(str(page)).run()
    assert not at.exception, (page.name, [e.value for e in at.exception])
    print("ran", page.name)
import app.common, app.livechart
print("app", app.common.__file__)
"""


def test_every_page_runs_from_the_installed_files(installed):
    site, elsewhere, env = installed
    r = subprocess.run([PY, "-c", PAGES_SCRIPT], cwd=elsewhere, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    ran = [ln.split()[1] for ln in r.stdout.splitlines() if ln.startswith("ran ")]
    assert ran == ["compare.py", "learn.py", "live.py", "runs.py", "selftrain.py", "setup.py"]
    app_file = next(ln.split()[1] for ln in r.stdout.splitlines() if ln.startswith("app "))
    assert Path(app_file).is_relative_to(site)


def test_app_settings_apply_outside_the_repo(installed):
    """Streamlit reads app/.streamlit/config.toml next to the main script from any folder:
    postScriptGC off (its gc.collect(2) starves training), localhost only, no usage stats."""
    site, elsewhere, env = installed
    r = subprocess.run([PY, "-c", "from streamlit import config as c; import dynsdpb.paths as P; "
                        "c._main_script_path = str(P.APP_MAIN); "
                        "c.get_config_options(force_reparse=True); "
                        "print([c.get_option(k) for k in ('runner.postScriptGC', "
                        "'server.address', 'browser.gatherUsageStats', "
                        "'server.enableStaticServing')])"],
                       cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[False, '127.0.0.1', False, True]"
