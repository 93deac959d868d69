"""`dynsdpb bench --app`: does watching the Live page slow training down?

Starts the workbench (`streamlit run`) on a free localhost port with a fresh runs directory,
starts one experiment from the Setup page in headless Chromium (the built-in encoder on the
built-in tweets, vanilla + dynsdpb, as a class would), then measures the lockstep step time
(the interval between consecutive metrics records of one arm, median over a window, so the
evaluation steps do not count) with 0, 1 and 4 Live tabs open, each visible (as 4 windows
side by side: the worst case), then the 4 as tabs of one window (one in front, 3 hidden), in
one run, and prints the ratios and the cores that the server, the training and the browser
used. Goal (issues #8, #20): step time with 4 local tabs / with none <= 1.10. "None" is the
mean of two phases without a tab, the first and the last of the run: on a shared machine
the speed drifts over minutes (baseline_drift = last / first).

Needs the dev extras (playwright) and Debian's chromium; never downloads a browser. The
engine does not import Streamlit: this module only drives the app from outside.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM = os.environ.get("DYNSDPB_CHROMIUM", "/usr/bin/chromium")
from dynsdpb.paths import APP_SERVER as APP  # what `dynsdpb app` serves (checkout or installed)


def free_port() -> int:
    """A free localhost port (the tests start apps and process groups on it too)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_health(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Wait until the app on `port` answers its health check; fail if `proc` exits."""
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError("the app did not come up")


def stop_server(proc: subprocess.Popen, grace: float = 15) -> None:
    """Terminate the app (its JobManager stops the training child with a checkpoint); kill
    it if it has not exited after `grace` seconds."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _running(pid: int) -> bool:
    """Whether `pid` is alive and not a zombie (an orphan waiting for a reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def stop_training(pid: int | None, grace: float = 60) -> None:
    """Wait for the training child, which outlives the app for its stop checkpoint (it watches
    its parent), to exit; SIGTERM, then SIGKILL it after `grace` seconds. Removing the runs
    directory while it still wrote left the directory behind."""
    if not pid:
        return
    end = time.time() + grace
    while _running(pid) and time.time() < end:
        time.sleep(0.2)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _running(pid):
            return
        try:
            os.kill(pid, sig)
        except OSError:
            return
        t = time.time() + 10
        while _running(pid) and time.time() < t:
            time.sleep(0.2)


def _config_yaml(tmp: Path, model: str, dataset: str, steps: int) -> Path:
    p = tmp / "bench.yaml"
    p.write_text("\n".join([
        f"model: {model}", f"dataset: {dataset}", "method: dynsdpb", f"steps: {steps}",
        "batch_size: 16", "max_len: 48", "max_train_samples: 2000", "val_size: 200",
        "test_size: 200", "eval_every: 1000000", "checkpoint_every: 0", "save_model: false"])
        + "\n", encoding="utf-8")
    return p


def _record_times(runs: Path, arm: str) -> list[float]:
    for exp in runs.iterdir():
        f = exp / arm / "metrics.jsonl"
        if f.is_file():
            out = []
            for line in f.read_text(encoding="utf-8").splitlines():
                try:
                    out.append(json.loads(line)["time"])
                except (ValueError, KeyError):
                    pass
            return out
    return []


def _cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of a process so far (Linux /proc), None where unknown."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, TypeError):
        return None


def _browser_cpu() -> dict[int, float]:
    """CPU seconds so far of every Chromium process on this machine (the bench's own browser:
    its renderer per tab, GPU and network processes), by pid."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                exe = f.read().split(b"\0", 1)[0]
        except OSError:
            continue
        if b"chrom" in os.path.basename(exe):
            c = _cpu_seconds(int(d))
            if c is not None:
                out[int(d)] = c
    return out


def _training_pid(runs: Path, arm: str) -> int | None:
    for exp in runs.iterdir():
        try:
            return int(json.loads((exp / arm / "status.json").read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def _run_over(runs: Path, arm: str) -> bool:
    for exp in runs.iterdir():
        try:
            st = json.loads((exp / arm / "status.json").read_text())
        except (OSError, ValueError):
            continue
        return st.get("state") not in ("queued", "running")
    return False


def _window(runs: Path, arm: str, n: int, timeout: float) -> list[float]:
    """Wait for `n` more records of `arm`; return the intervals between them (seconds).
    Returns early (with what there is) if the run ended or failed meanwhile."""
    start = len(_record_times(runs, arm))
    end = time.time() + timeout
    while time.time() < end:
        t = _record_times(runs, arm)
        if len(t) >= start + n + 1:
            seg = t[start:start + n + 1]
            return [b - a for a, b in zip(seg, seg[1:])]
        if _run_over(runs, arm):
            break
        time.sleep(0.2)
    t = _record_times(runs, arm)[start:]
    return [b - a for a, b in zip(t, t[1:])]


# Headless Chromium shows every page as visible, as if each tab had a window of its own. Tabs in
# one browser window are hidden but the front one: the browser then reports
# document.visibilityState "hidden" to them, which this sets by hand (the app's charts and
# polling stop in a hidden tab: app/visibility.py, app/livechart.py).
JS_HIDE = """(v) => { Object.defineProperty(document, 'visibilityState',
    {get: () => v, configurable: true});
    document.dispatchEvent(new Event('visibilitychange')); }"""


def start_from_yaml(page, base: str, cfg_file: Path, steps: int) -> None:
    """Setup: load the config from YAML, as a user would, then Start; waits for Live.
    `steps`: the config's steps (the form must show them before Start is pressed)."""
    page.goto(base + "/")
    page.get_by_role("heading", name="Setup").wait_for()
    page.get_by_text("Load or save a config (YAML)").click()
    page.locator("input[type=file]").first.set_input_files(str(cfg_file))
    page.get_by_text(f"Loaded {cfg_file.name}").wait_for()
    # The message shows before the rest of that rerun reaches the form: wait for the
    # fields, or Start would send the old values back.
    page.wait_for_function(
        "(n) => { const e = Array.from(document.querySelectorAll("
        "'input[aria-label=\"steps\"]')); return e.length > 0 && "
        "e.every(x => x.value === String(n)); }", arg=steps)
    page.wait_for_function("() => { const b = Array.from(document.querySelectorAll("
                           "'button')).find(b => b.innerText.trim() === 'Start');"
                           " return b && !b.disabled; }")
    page.get_by_role("button", name="Start", exact=True).click()
    page.get_by_role("heading", name="Live").wait_for()


def _measure(runs: Path, arm: str, server_pid: int, steps: int) -> dict:
    """Median step time over `steps` steps, and the cores the server, the training and the
    browser used meanwhile (2.0 = both cores of this machine)."""
    pids = {"server": server_pid, "training": _training_pid(runs, arm)}
    c0 = {k: _cpu_seconds(v) for k, v in pids.items()}
    b0 = _browser_cpu()
    t0 = time.time()
    dts = _window(runs, arm, steps, timeout=1200)
    wall = time.time() - t0
    cores = {f"{k}_cores": round((_cpu_seconds(pids[k]) - c0[k]) / wall, 2)
             for k in pids if c0[k] is not None and _cpu_seconds(pids[k])}
    b1 = _browser_cpu()
    cores["browser_cores"] = round(sum(c - b0.get(p, 0.0) for p, c in b1.items()) / wall, 2)
    med = statistics.median(dts) if dts else float("nan")
    return {"median_step_s": med, "n": len(dts), **cores}


def _phase_line(what: str, ph: dict) -> str:
    """One log line of a measured phase."""
    return (f"{what}: median step {ph['median_step_s']:.3f} s over {ph['n']} steps; "
            + ", ".join(f"{k} {v}" for k, v in ph.items() if k.endswith("_cores")))


def run(tabs: tuple[int, ...] = (0, 1, 4), steps_per_phase: int = 12, model: str = "minilm-l6",
        dataset: str = "tweets-sentiment", port: int | None = None,
        log=None, one_in_front: bool = True) -> dict:
    """Step times with 0, 1, ... Live tabs open, each tab visible (a window each: the worst
    case); then, if `one_in_front`, the largest number of tabs as tabs of one window (all but
    one hidden)."""
    log = log or (lambda m: print(m, flush=True))
    from playwright.sync_api import sync_playwright
    tmp = Path(tempfile.mkdtemp(prefix="dynsdpb-bench-app-"))
    runs = tmp / "runs"
    # Steps enough that the run never ends while the phases are measured (a tiny model does
    # hundreds a minute); the run is cut off with the app at the end, as a class would.
    total = 100_000
    cfg = _config_yaml(tmp, model, dataset, total)
    port = port or free_port()
    env = dict(os.environ, DYNSDPB_RUNS_DIR=str(runs), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    server_log = open(tmp / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(APP),
                             "--server.port", str(port), "--server.headless", "true",
                             "--server.address", "127.0.0.1"],
                            cwd=tmp, env=env, stdout=server_log,
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    arm = "dynsdpb-s0"
    result: dict = {"model": model, "dataset": dataset, "steps_per_phase": steps_per_phase,
                    "server_pid": proc.pid, "phases": {}}
    try:
        wait_health(port, proc)
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                      "--disable-component-update", "--disable-sync"])
            ctx = browser.new_context(viewport={"width": 1400, "height": 2400})
            page = ctx.new_page()
            page.set_default_timeout(120_000)
            start_from_yaml(page, base, cfg, total)
            page.close()
            log("started; waiting for the first steps (model load)")
            _window(runs, arm, 3, timeout=600)       # warm: loading done, steps flowing
            open_pages: list = []
            for n in tabs:
                while len(open_pages) < n:
                    pg = ctx.new_page()
                    pg.set_default_timeout(300_000)
                    t0 = time.time()
                    pg.goto(base + "/live")
                    pg.get_by_role("heading", name="Live").wait_for()
                    pg.get_by_text("latest step").first.wait_for()
                    result.setdefault("tab_open_s", []).append(round(time.time() - t0, 2))
                    log(f"Live tab {len(open_pages) + 1} showed steps after "
                        f"{time.time() - t0:.1f} s")
                    open_pages.append(pg)
                while len(open_pages) > n:
                    open_pages.pop().close()
                _window(runs, arm, 2, timeout=600)   # let the new tabs settle
                ph = result["phases"][str(n)] = _measure(runs, arm, proc.pid, steps_per_phase)
                log(_phase_line(f"{n} Live tab(s), each visible", ph))
                if open_pages:   # what the viewers saw, to look at afterwards
                    shot = tmp / f"live-{n}-tabs.png"
                    open_pages[-1].screenshot(path=str(shot), full_page=True)
                    result.setdefault("screenshots", []).append(str(shot))
            if one_in_front and len(open_pages) > 1:
                for pg in open_pages[1:]:
                    pg.evaluate(JS_HIDE, "hidden")
                n = len(open_pages)
                _window(runs, arm, 2, timeout=600)
                ph = result["phases"][f"{n}-front"] = _measure(runs, arm, proc.pid,
                                                                steps_per_phase)
                log(_phase_line(f"{n} Live tabs in one window (one in front, {n - 1} hidden)",
                                ph))
            for pg in open_pages:
                pg.close()
            if any(tabs):
                # the same machine, no tab, again: a shared machine's speed drifts over the
                # minutes of a run, so the ratios use both baselines (before and after)
                _window(runs, arm, 2, timeout=600)
                ph = result["phases"]["0-end"] = _measure(runs, arm, proc.pid, steps_per_phase)
                log(_phase_line("0 Live tabs again (all closed)", ph))
            browser.close()
    finally:
        training = _training_pid(runs, arm) if runs.is_dir() else None
        stop_server(proc)
        stop_training(training)
        server_log.close()
        # the bench's experiment (its stop checkpoint: about 0.5 GB for MiniLM) is throwaway;
        # 50 runs of the bench left in the temp folder filled a disk. Screenshots and the
        # server log stay.
        shutil.rmtree(runs, ignore_errors=True)
    ph = result["phases"]
    # no tab: the mean of the first and the last phase, which bracket the watched ones
    ends = [ph[k]["median_step_s"] for k in ("0", "0-end") if k in ph]
    none = statistics.fmean(ends) if ends else None
    if len(ends) == 2:
        result["baseline_drift"] = ends[1] / ends[0]
    for n in tabs:
        if n and none:
            result[f"step_time_{n}_tabs_over_none"] = ph[str(n)]["median_step_s"] / none
            if f"{n}-front" in ph:
                result[f"step_time_{n}_tabs_one_in_front_over_none"] = (
                    ph[f"{n}-front"]["median_step_s"] / none)
    result["goal"] = ("x1.10 with 4 local tabs: step_time_4_tabs_one_in_front_over_none (tabs of "
                      "one window) <= 1.10; step_time_4_tabs_over_none is the worst case, 4 "
                      "windows side by side, each drawing")
    result["server_log"] = str(tmp / "server.log")
    return result


if __name__ == "__main__":
    out = run()
    print(json.dumps(out))
