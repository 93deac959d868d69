"""Values typed by a user as a RunConfig: coercion of text and YAML/JSON scalars, mappings and
config files, --set overrides, and the comma lists of seeds and methods."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import yaml

from dynsdpb.config.check import check_config
from dynsdpb.config.fields import FIELDS, METHODS, RunConfig, with_family_defaults
from dynsdpb.errors import ConfigError, Problem

# ---------------------------------------------------------------------------------------
# Parsing values typed by a user (CLI --set, YAML, the app's text inputs)

def coerce(name: str, value: Any) -> Any:
    """A value typed by a user (text, or a YAML/JSON scalar) as field `name`'s type; a
    ConfigError naming the field and the fix otherwise."""
    f = FIELDS[name]
    typ = f.type if isinstance(f.type, type) else {"str": str, "int": int, "float": float,
                                                    "bool": bool}[f.type]
    if typ is bool:
        if isinstance(value, bool):
            return value
        s = str(value).strip().lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off"):
            return False
        raise ConfigError.one(name, value, "use true or false")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError.one(name, value, "use a whole number")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value).strip())
        except ValueError:
            raise ConfigError.one(name, value, "use a whole number") from None
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError.one(name, value, "use a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError.one(name, value, "use a number such as 0.5 or 5e-5") from None
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConfigError.one(name, value, "use text")
    return value.strip()


def from_dict(d: dict[str, Any], base: RunConfig | None = None, *, check: bool = True) -> RunConfig:
    """Build a config from a mapping, coercing types; unknown keys are errors."""
    if not isinstance(d, dict):
        raise ConfigError.one("config", type(d).__name__, "the config must be a mapping of "
                              "field names to values")
    problems: list[Problem] = []
    values: dict[str, Any] = {}
    for k, v in d.items():
        if k not in FIELDS:
            near = [n for n in FIELDS if n.startswith(str(k)[:3])]
            hint = f" (did you mean {', '.join(near)}?)" if near else ""
            problems.append(Problem(str(k), v, f"unknown field{hint}; see `dynsdpb train --help`"))
            continue
        try:
            values[k] = coerce(k, v)
        except ConfigError as e:
            problems.extend(e.problems)
    if problems:
        raise ConfigError(problems)
    cfg = dataclasses.replace(base or RunConfig(), **values)
    if base is None:
        cfg = with_family_defaults(cfg, set(values))
    if check:
        check_config(cfg)
    return cfg


def parse_overrides(pairs: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in pairs or []:
        if "=" not in p:
            raise ConfigError.one("--set", p, "write overrides as key=value, e.g. --set lr=3e-5")
        k, v = p.split("=", 1)
        out[k.strip()] = v
    return out


def read_mapping(path: str | Path):
    """The parsed content of a .yaml/.json config file (JSON parsed as JSON, so a broken JSON
    file is reported as such instead of read as some YAML); {} for an empty file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError.one("config", str(path), "no such file; give the path of a .yaml or "
                              ".json config (save one with the app or `dynsdpb train --dump`)")
    text = p.read_text(encoding="utf-8", errors="replace")
    try:
        d = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError.one("config", str(path), f"not valid YAML/JSON ({str(e).splitlines()[0]})"
                              ) from None
    return d if d is not None else {}


def load(path: str | Path) -> RunConfig:
    return from_dict(read_mapping(path))


def dumps(cfg: RunConfig, fmt: str = "yaml") -> str:
    d = cfg.to_dict()
    return json.dumps(d, indent=2) if fmt == "json" else yaml.safe_dump(d, sort_keys=False)


def save(cfg: RunConfig, path: str | Path) -> None:
    p = Path(path)
    p.write_text(dumps(cfg, "json" if p.suffix == ".json" else "yaml"), encoding="utf-8")


def parse_int_list(name: str, text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2] with a clear message for anything else."""
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(int(part))
        except ValueError:
            raise ConfigError.one(name, text, "give whole numbers separated by commas, e.g. 0,1,2"
                                  ) from None
    if not out:
        raise ConfigError.one(name, text, "give at least one value, e.g. 0")
    return out


def parse_methods(text: str) -> list[str]:
    out = [m.strip() for m in str(text).split(",") if m.strip()]
    bad = [m for m in out if m not in METHODS]
    if bad or not out:
        raise ConfigError.one("methods", text, f"use a comma-separated list of {', '.join(METHODS)}")
    return list(dict.fromkeys(out))
