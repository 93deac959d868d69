"""Per sweep cell, what the distilling arms' loss looked like at the end of training (mean
alpha and tau, the KD term's share of the loss and the logit drift over the last 20 steps,
averaged over seeds). The same table is in `dynsdpb report SWEEP`; this prints it alone.

    python scripts/sweep_dynamics.py runs/sweep-tweets
"""
from __future__ import annotations

import sys

from dynsdpb.sweep import read as SR


def main(path: str) -> None:
    print("| cell | method | seeds | alpha | tau | kd / loss | logit_drift (nats) |")
    print("|---|---|---|---|---|---|---|")
    for d in SR.dynamics(path):
        cell = ", ".join(f"{k}={v}" for k, v in d["params"].items())
        print(f"| {cell} | {d['method']} | {d['seeds']} | {d['alpha']:.3f} | {d['tau']:.2f} | "
              f"{100 * d['kd_share']:.2f}% | {d['logit_drift']:.4f} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/sweep-tweets")
