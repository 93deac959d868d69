"""The command line's shared argument handling: one typed flag per RunConfig field, the
values they give (with --set, and a --config file or --preset beneath them), and a fresh
--out folder. Used by dynsdpb.cli (train, compare, resume) and dynsdpb.cli.explore
(selftrain, sweep, report, bench)."""
from __future__ import annotations

import argparse
from pathlib import Path

from dynsdpb import config as C
from dynsdpb.errors import ConfigError
from dynsdpb.store import make_out


METAVAR = {int: "N", float: "X", str: "TEXT", "int": "N", "float": "X", "str": "TEXT"}


def fresh_out(out: str) -> Path:
    """The --out folder of a command that creates one (train, compare, selftrain, sweep): the
    store's one rule (store.check_out), then created."""
    return make_out(out)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def only_resume(a, keep: tuple[str, ...] = ()) -> None:
    """--resume DIR continues DIR as it was made: an option that would change what it runs
    (or a new --out) does not apply; it is refused rather than ignored. `keep`: options that
    do apply to a continued folder (e.g. --report-to)."""
    for k, v in vars(a).items():
        if k in ("cmd", "fn", "resume", *keep) or v is None or v is False:
            continue
        name = flag(k[2:]) if k.startswith(("f_", "l_")) else flag(k)
        raise ConfigError.one(name, v if not isinstance(v, list) else ",".join(v),
                              "does not apply with --resume (the folder continues as it was "
                              "created); drop it, or start a new one with --out")


def fields_from_args(a) -> dict:
    """Field values given on the command line: typed flags and --set, one value per field.

    A field given both ways with different values is refused (exit 2) rather than one
    silently winning; the same value twice is fine."""
    flags = {n: v for n in C.FIELDS if (v := getattr(a, "f_" + n, None)) is not None}
    sets = C.parse_overrides(a.set)
    for k in flags.keys() & sets.keys():
        if C.coerce(k, flags[k]) != C.coerce(k, sets[k]):
            raise ConfigError.one(k, sets[k], f"given twice with different values "
                                  f"({flag(k)} {flags[k]} and --set {k}={sets[k]}); keep one")
    return {**flags, **sets}


def experiment_file(a):
    """The --config file or --preset as an Experiment (unchecked), or None; and whether it
    states its own methods/seeds (an old single-run file does not)."""
    from dynsdpb import presets as PR
    if a.config and a.preset:
        raise ConfigError.one("--preset", a.preset, "give --config or --preset, not both")
    if a.preset:
        exp = PR.load_preset(a.preset)
        return exp, True
    if a.config:
        d = C.read_mapping(a.config)
        return PR.experiment_from_dict(d, a.config, check=False), isinstance(d, dict) and (
            "methods" in d or "seeds" in d)
    return None, False


def resolve(a, compare: bool):
    """(base config, methods, seeds, description) from file < flags and --set.

    The file is a whole experiment (dynsdpb/presets.py) or an old single-run config."""
    exp, file_lists = experiment_file(a)
    over = fields_from_args(a)
    if exp is None:       # no file: the field defaults (a decoder's temperatures for decoders)
        base = C.from_dict(over, check=False)
    else:
        base = C.from_dict(over, base=exp.base, check=False)
        if "model" in over or "task" in over:
            # a family changed on the command line: that family's temperatures where the
            # file kept the other family's defaults and no flag gave one
            was = C.default_temperatures(C.is_causal_lm(exp.base))
            kept = {k for k in was if getattr(base, k) != was[k]} | set(over)
            base = C.with_family_defaults(base, kept)

    def pick(name: str, one: str, listed: str | None, parse, default):
        # --methods / --method / --set method=..., then the file's list, then the default.
        if listed is not None and one in over:
            if parse(listed) != [getattr(base, one)]:
                raise ConfigError.one(name, listed, f"given twice with different values "
                                      f"(--{name} {listed} and {flag(one)}/--set {one}="
                                      f"{over[one]}); keep one")
        if listed is not None:
            return parse(listed)
        if one in over:
            return [getattr(base, one)]
        if exp is not None and (file_lists or not compare):
            return list(getattr(exp, name))
        return default

    methods = pick("methods", "method", getattr(a, "methods", None), C.parse_methods,
                   ["vanilla", "dlb", "dynsdpb"] if compare else [base.method])
    seeds = pick("seeds", "seed", getattr(a, "seeds", None),
                 lambda t: C.parse_int_list("seeds", t), [0, 1, 2] if compare else [base.seed])
    return base, methods, seeds, exp.description if exp else ""


def add_config_flags(p: argparse.ArgumentParser, compare: bool) -> None:
    """One typed flag per RunConfig field, with the field's help: --lr 3e-5 --alpha-max 2.

    Values stay strings here and go through config.from_dict like --set and YAML values,
    so a bad one gets the same one-line message naming the field and the fix."""
    defaults = C.RunConfig()
    for group in dict.fromkeys(f.metadata["group"] for f in C.FIELDS.values()):
        g = p.add_argument_group(f"{group} fields (also --set NAME=VALUE)")
        for name, f in C.FIELDS.items():
            if f.metadata["group"] != group:
                continue
            help = f.metadata["help"].replace("%", "%%")
            if compare and name in ("method", "seed"):
                help = f"one {name} only: the same as --{name}s {name.upper()}."
            help += f" (default: {getattr(defaults, name)!r})"
            if f.type in (bool, "bool"):
                g.add_argument(flag(name), dest="f_" + name, nargs="?", const="true",
                               metavar="true|false", help=help)
                g.add_argument("--no-" + name.replace("_", "-"), dest="f_" + name,
                               action="store_const", const="false", help=argparse.SUPPRESS)
                continue
            ch = f.metadata.get("choices")
            g.add_argument(flag(name), dest="f_" + name,
                           metavar="{" + ",".join(ch) + "}" if ch else METAVAR[f.type],
                           help=help)
