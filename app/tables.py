"""Results as the pages' tables show them: the engine's summary with units and reasons for
"n/a", decoders' test results side by side, one value as a table cell or a result line.
"""
from __future__ import annotations

import math


def summary_rows(summary: dict) -> list[dict]:
    """The engine's summary table as the app shows it: columns in words with their unit, the
    seeds and test items behind each row, "—" for nothing to show, and every "n/a" says why
    (one seed has no spread and no interval)."""
    from dynsdpb.compare import table_rows
    out = []
    for row in table_rows(summary):
        n_seeds = len(summary["methods"].get(row["method"], {}).get("seeds", []))
        why = "n/a: one seed" if n_seeds < 2 else "n/a: a value is missing"
        new = {}
        for k, v in row.items():
            if isinstance(v, str):
                if v.strip() in ("-", "", "None"):
                    v = "—" if not (row["method"] != "vanilla" and k.startswith("diff")) \
                        else "—: no vanilla arm to pair with"
                elif "n/a" in v:
                    v = v.replace("n/a", why)
            elif v is None:
                v = "—"
            new[k] = v
        out.append(new)
    return out


def decoder_summary_rows(summary: dict) -> list[dict]:
    """Decoders' test results next to each other: strict and flexible exact match (%), the
    share an echo of the question solves, truncated generations, perplexity, mean ± std
    over seeds (the engine's summary; its main table shows the primary metric alone)."""
    def fmt(key: str, r: dict) -> str:
        if not r or r.get("mean") is None:
            return "—"
        pct = is_percent(key)
        m = r["mean"] * (100 if pct else 1)
        sd = r.get("std")
        ok = isinstance(sd, (int, float)) and math.isfinite(sd)
        return (f"{m:.2f}" if pct else f"{m:.4g}") + (
            f" ± {sd * (100 if pct else 1):.2f}" if ok and pct else f" ± {sd:.3g}" if ok else "")
    rows = []
    for method, r in summary.get("methods", {}).items():
        rows.append({"method": method, "seeds": len(r.get("seeds", [])),
                     "test items": summary.get("test_size") or "—",
                     "strict exact match (%)": fmt("test_strict_exact_match",
                                                   r.get("test_strict_exact_match", {})),
                     "flexible exact match (%)": fmt("test_exact_match",
                                                     r.get("test_exact_match", {})),
                     "echo baseline (%)": fmt("test_echo_share", r.get("test_echo_share", {})),
                     "truncated (%)": fmt("test_truncated", r.get("test_truncated", {})),
                     "perplexity": fmt("test_perplexity", r.get("test_perplexity", {})),
                     "test loss (nats/token)": fmt("test_loss", r.get("test_loss", {}))})
    return rows


def cell(key: str, v) -> str:
    """A value for a table cell: shares in %, 4 significant digits, "—" for none."""
    from dynsdpb.records import display_value
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    v = display_value(key, v)
    if isinstance(v, float):
        return f"{v:.2f}" if key in _PERCENT_KEYS() else f"{v:.4g}"
    return str(v)



def result_text(metric: str, v) -> str:
    """'accuracy 64.50 %': a test result in the same unit as the charts and Compare."""
    from dynsdpb.records import KEYS
    if v is None:
        return "—"
    key = "val_" + metric.removeprefix("test_")
    pct = KEYS.get(key) is not None and KEYS[key].percent
    return f"{metric.removeprefix('test_')} {cell(key, v)}{' %' if pct else ''}"

def is_percent(metric: str) -> bool:
    """Is a test_/val_ metric a share shown in % (records.KEYS of its val_ twin)?"""
    from dynsdpb.compare import PERCENT
    from dynsdpb.records import KEYS
    k = KEYS.get("val_" + metric.removeprefix("test_").removeprefix("val_"))
    return bool(k and k.percent) or metric in PERCENT


def _PERCENT_KEYS() -> set[str]:
    from dynsdpb.records import KEYS
    return {k for k, v in KEYS.items() if v.percent}
