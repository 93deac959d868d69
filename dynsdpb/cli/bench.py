"""`dynsdpb bench [--decoder] [--app]`: measure the workbench itself; its flags."""
from __future__ import annotations

import sys

from dynsdpb.errors import ConfigError


def cmd_bench(a) -> int:
    import json
    # --json: progress on stderr, so stdout holds only the JSON line.
    out = sys.stderr if a.json else sys.stdout
    log = lambda m: print(m, file=out, flush=True)  # noqa: E731
    if a.app and a.decoder:
        raise ConfigError.one("bench", "--app --decoder", "choose one: --app measures the app, "
                              "--decoder the decoder's training")
    if a.app:
        given = [f for f, v in (("--model", a.model), ("--dataset", a.dataset),
                                ("--steps", a.steps)) if v is not None]
        if given:
            raise ConfigError.one(given[0], getattr(a, given[0][2:]), "does not apply to "
                                  "--app (it measures the app on its own settings); drop it")
        import importlib.util
        if importlib.util.find_spec("playwright") is None:    # bench_app's browser driver
            raise ConfigError.one("bench", "--app", "needs the dev extras: pip install "
                                  "playwright (and Debian's chromium)")
        from dynsdpb.bench.app import run as run_app
        result = run_app(log=log)
    else:
        if a.decoder:
            from dynsdpb.bench import decoder as mode
            model, dataset = a.model or "smollm2-135m", a.dataset or "arith-easy"
        else:
            from dynsdpb.bench import speed as mode
            model, dataset = a.model or "minilm-l6", a.dataset or "tweets-sentiment"
        if a.steps is not None and a.steps < 1:
            raise ConfigError.one("--steps", a.steps, "give at least 1 step per measured run")
        result = mode.run(model=model, dataset=dataset, steps=30 if a.steps is None else a.steps,
                          log=log)
        for k in mode.FIGURES:
            v = result.get(k)
            goal = result["goals"].get(k, "")
            met = result["goals_met"].get(k)
            log(f"{k:34s} {v:8.3f}  {('goal ' + goal) if goal else ''}"
                f"{'' if met is None else ('  met' if met else '  MISSED')}"
                if v is not None else f"{k:34s}      n/a")
    print(json.dumps(result))
    return 0


def add_bench(sub) -> None:
    b = sub.add_parser("bench", help="measure the workbench itself", allow_abbrev=False)
    b.add_argument("--app", action="store_true", help="step time of a training run with 0, 1 "
                   "and 4 Live tabs open, each visible, then 4 tabs of one window (one in "
                   "front, 3 hidden) (starts the app and headless Chromium; minutes)")
    b.add_argument("--json", action="store_true", help="progress on stderr; stdout holds only "
                   "the result as one JSON line")
    b.add_argument("--decoder", action="store_true", help="the figures for the decoder (LoRA as "
                   "in the preset decoder-quick-demo, top-k teacher cache), plus the cache's "
                   "bytes top-k / full")
    b.add_argument("--model", help="model of the speed/memory figures (default minilm-l6; "
                   "--decoder: smollm2-135m)")
    b.add_argument("--dataset", help="dataset of those figures (default tweets-sentiment; "
                   "--decoder: arith-easy)")
    b.add_argument("--steps", type=int, help="steps per measured run (default 30)")
    b.set_defaults(fn=cmd_bench)
