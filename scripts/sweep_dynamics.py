"""Per sweep setting, what the distilling arms' loss looked like at the end of training:
mean alpha and tau, the KD term's share of the loss and the train-mode logit drift over the
last 20 steps, averaged over seeds. Explains the sweep's decomposition table (docs/results.md).

    python scripts/sweep_dynamics.py runs/sweep-tweets
"""
from __future__ import annotations

import statistics
import sys
from collections import defaultdict

from dynsdpb.sweep import spec as SW
from dynsdpb.store import RunDir


def main(path: str) -> None:
    spec = SW.load_sweep(path)
    axes = list(spec["grid"])
    rows = defaultdict(list)
    for key, cfg in SW.plan_runs(path).items():
        if cfg.method not in ("dlb", "dynsdpb"):
            continue
        rd = RunDir(SW.run_dir(path, key) / f"{cfg.method}-s{cfg.seed}")
        recs = [r for r in rd.metrics() if r.get("kd") is not None][-20:]
        if not rd.summary() or not recs:
            continue
        reads = [a for a in axes if not (cfg.method == "dlb" and a == "alpha_max")]
        label = (cfg.method,) + tuple(f"{a}={getattr(cfg, a)}" for a in reads)
        mean = lambda k: statistics.mean(r[k] for r in recs if r.get(k) is not None)  # noqa
        rows[label].append({"alpha": mean("alpha"), "tau": mean("tau"),
                            "kd_share": mean("kd") / mean("loss"),
                            "drift": mean("logit_drift")})
    print("| method | setting | seeds | alpha | tau | kd / loss | logit_drift (nats) |")
    print("|---|---|---|---|---|---|---|")
    for label in sorted(rows):
        v = rows[label]
        m = {k: statistics.mean(x[k] for x in v) for k in v[0]}
        print(f"| {label[0]} | {', '.join(label[1:])} | {len(v)} | {m['alpha']:.3f} | "
              f"{m['tau']:.2f} | {100 * m['kd_share']:.2f}% | {m['drift']:.4f} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/sweep-tweets")
