"""`dynsdpb report`: report.md and PNG charts of experiments and sweeps."""
from __future__ import annotations


def cmd_report(a) -> int:
    from dynsdpb.report import check_sources, write_report
    from dynsdpb.store import make_out
    check_sources(a.paths)
    make_out(a.out, reuse=True)       # the one --out rule; an earlier report is replaced
    md = write_report(a.paths, a.out)
    print(md)
    return 0


def add_report(sub) -> None:
    rp = sub.add_parser("report", help="report.md and PNG charts of experiments and sweeps")
    rp.add_argument("paths", nargs="+", metavar="RUN_OR_SWEEP",
                    help="experiment or sweep folders")
    rp.add_argument("--out", required=True, help="folder for report.md and the charts")
    rp.set_defaults(fn=cmd_report)
