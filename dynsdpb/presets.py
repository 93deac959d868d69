"""Experiments as YAML files, and the presets shipped in assets/presets/.

An experiment file is a whole experiment, not one run: every `RunConfig` field at top level
(the base config every arm shares) plus `methods: [...]` and `seeds: [...]`, and optionally
`name` and `description`. `method` and `seed` are left out of it: the arms take them from
`methods` and `seeds`. An older single-run YAML (`method: dlb`, `seed: 0`) loads as an
experiment with one method and one seed, so every saved config still works. `name` is both
the experiment's name and `RunConfig.name` (one field, one value).

    name: quick-demo
    description: The classroom demo ...
    methods: [vanilla, dynsdpb]
    seeds: [0]
    model: minilm-l6
    steps: 60
    ...

Values go through `config.from_dict` (types, unknown keys) and `config.validate` (once per
method, as each arm will run), so a bad file is one `ConfigError` naming the field and the fix.
YAML tags such as !!python/object are refused: only `yaml.safe_load` reads these files.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dynsdpb import config as C
from dynsdpb.errors import ConfigError, Problem
from dynsdpb.paths import ASSETS


def presets_dir() -> Path:
    """assets/presets/ (top level in a checkout, inside the package when installed)."""
    return ASSETS / "presets"


@dataclass(frozen=True)
class Experiment:
    base: C.RunConfig                       # shared by every arm; method/seed set per arm
    methods: list[str] = field(default_factory=lambda: ["vanilla", "dynsdpb"])
    seeds: list[int] = field(default_factory=lambda: [0])
    name: str = ""
    description: str = ""


def dump_experiment(base: C.RunConfig, methods: list[str], seeds: list[int], name: str = "",
                    description: str = "") -> str:
    """YAML of the experiment: its name, description, methods and seeds, then only the fields
    whose value differs from RunConfig's default (a reader sees what the experiment changes);
    `load_experiment` reads it back to the same values. Full files, as earlier versions wrote
    them, load the same way."""
    head: dict = {}
    name = name or base.name              # RunConfig.name and the experiment's name are one
    if name:
        head["name"] = name
    if description:
        head["description"] = description
    head["methods"] = list(methods)
    head["seeds"] = [int(s) for s in seeds]
    # the defaults a reader gets back: a decoder's temperatures for a decoder (config/fields.py)
    defaults = {**C.RunConfig().to_dict(),
                **C.default_temperatures(C.is_causal_lm(base))}
    body = {k: v for k, v in base.to_dict().items()
            if k not in ("method", "seed", "name") and v != defaults[k]}
    return yaml.safe_dump({**head, **body}, sort_keys=False, allow_unicode=True, width=100)


def _as_list(name: str, v) -> str:
    """A YAML list or a comma-separated string, as the text the config parsers take."""
    if isinstance(v, (list, tuple)):
        if any(isinstance(x, (list, dict)) for x in v):
            raise ConfigError.one(name, v, "give a flat list, e.g. [0, 1, 2]")
        return ",".join(str(x) for x in v)
    if isinstance(v, (str, int)) and not isinstance(v, bool):
        return str(v)
    raise ConfigError.one(name, v, "give a list, e.g. [0, 1, 2] or [vanilla, dynsdpb]")


def _once(name: str, vals: list) -> None:
    # Arms are named method-s<seed>: a repeated one would share a run folder.
    if len(set(vals)) != len(vals):
        eg = "[0, 1, 2]" if name == "seeds" else "[vanilla, dynsdpb]"
        raise ConfigError.one(name, vals, f"give each of the {name} once, e.g. {eg}")


def experiment_from_dict(d, source: str = "experiment", check: bool = True) -> Experiment:
    """An experiment from a parsed mapping. check=False skips `validate` (the CLI checks once,
    after its flags are applied, so a flag can fix a value of the file)."""
    if not isinstance(d, dict):
        raise ConfigError.one(source, type(d).__name__, "the config must be a mapping of field "
                              "names to values (plus methods: and seeds: lists)")
    d = dict(d)
    name = d.pop("name", "") or ""
    description = d.pop("description", "") or ""
    for k, v in (("name", name), ("description", description)):
        if not isinstance(v, str):
            raise ConfigError.one(k, v, "use text")
    problems: list[Problem] = []
    methods = seeds = None
    if "methods" in d:
        try:
            raw = _as_list("methods", d.pop("methods"))
            methods = [m.strip() for m in raw.split(",") if m.strip()]
            _once("methods", methods)
            methods = C.parse_methods(raw)
        except ConfigError as e:
            problems.extend(e.problems)
    if "seeds" in d:
        try:
            seeds = C.parse_int_list("seeds", _as_list("seeds", d.pop("seeds")))
            _once("seeds", seeds)
        except ConfigError as e:
            problems.extend(e.problems)
    try:
        cfg = C.from_dict(d, check=False)
    except ConfigError as e:
        problems.extend(e.problems)
        cfg = None
    if problems:
        raise ConfigError(problems)
    # One field, one value: `method:` next to `methods:` must be one of them (same for seed).
    if methods is None:
        methods = [cfg.method]
    elif "method" in d and cfg.method not in methods:
        raise ConfigError.one("method", cfg.method, f"not in methods {methods}; drop `method:` "
                              "(the arms take theirs from `methods:`)")
    if seeds is None:
        seeds = [cfg.seed]
    elif "seed" in d and cfg.seed not in seeds:
        raise ConfigError.one("seed", cfg.seed, f"not in seeds {seeds}; drop `seed:` (the arms "
                              "take theirs from `seeds:`)")
    # The base carries the method a single-run view shows (the last distilling one, as the
    # Setup page saves it) and the first seed; every arm is validated as it will run.
    base = cfg.replace(method=next((m for m in reversed(methods) if m != "vanilla"), methods[0]),
                       seed=seeds[0], name=name.strip())
    exp = Experiment(base=base, methods=methods, seeds=seeds, name=name, description=description)
    return check_experiment(exp) if check else exp


def check_experiment(exp: Experiment) -> Experiment:
    """Validate every arm as it will run; all problems at once, each named once."""
    base, methods, seeds = exp.base, exp.methods, exp.seeds
    seen: set[tuple] = set()
    all_problems: list[Problem] = []
    for m in methods:
        for s in seeds:
            for p in C.validate(base.replace(method=m, seed=s)):
                key = (p.field, repr(p.value), p.fix)
                if key not in seen:
                    seen.add(key)
                    all_problems.append(p)
    if all_problems:
        raise ConfigError(all_problems)
    return exp


def load_experiment(text: str, source: str = "experiment") -> Experiment:
    """Parse an experiment YAML (or an old single-run YAML/JSON; JSON is YAML too).

    `source` names the file or upload in messages."""
    try:
        d = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError.one("config", source, f"not valid YAML/JSON ({str(e).splitlines()[0]})"
                              ) from None
    return experiment_from_dict(d if d is not None else {}, source)


def load_experiment_file(path: str | Path, check: bool = True) -> Experiment:
    return experiment_from_dict(C.read_mapping(path), str(path), check)


def list_presets() -> list[str]:
    """Names of the shipped presets (file names without .yaml), quick-demo first."""
    d = presets_dir()
    names = sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []
    return sorted(names, key=lambda n: (n != "quick-demo", n))


def load_preset(name: str) -> Experiment:
    names = list_presets()
    if name not in names:
        raise ConfigError.one("preset", name, f"unknown preset; use one of {', '.join(names)}")
    p = presets_dir() / f"{name}.yaml"
    return load_experiment(p.read_text(encoding="utf-8"), str(p))
