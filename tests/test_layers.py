"""The package's house rules, checked from the code's own imports (AST, every import statement,
also those inside functions): no import circles, no import from a lower layer up into a higher
one, no module importing another module's private names, and every task implementing the seam."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "dynsdpb"

# Lower layers first. A module may import its own layer's modules and any lower layer's.
LAYERS = [
    {"errors", "paths", "records", "metrics", "tables", "catalog"},
    {"store", "config"},
    {"engine", "presets", "compare"},
    {"encoder", "decoder"},
    {"tasks"},
    {"experiment"},
    {"selftrain", "sweep", "bench", "integrations"},   # the workflows, each on experiments
    {"jobs", "report"},   # the app's queue runs experiments and loops; reports read both
    {"cli"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}
# Within one layer these never import each other: the model families, and the workflows.
APART = [{"encoder", "decoder"}, {"selftrain", "sweep", "bench", "integrations"}]


def modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        rel = p.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def imports(path: Path, name: str, known: set[str]) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every import of a project module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.split(".")[0] == "dynsdpb"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "dynsdpb":
                continue
            for a in node.names:   # `from pkg import module` imports that module
                sub = f"{mod}.{a.name}"
                if sub in known:
                    out.append((sub, []))
                else:
                    out.append((mod, [a.name]))
    return out


def graph() -> tuple[dict[str, set[str]], dict[str, list[tuple[str, list[str]]]]]:
    mods = modules()
    known = set(mods)
    raw = {m: imports(p, m, known) for m, p in mods.items()}
    return {m: {t for t, _ in v if t in known and t != m} for m, v in raw.items()}, raw


def top(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else ""


def circles(g: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(g.get(m, ())):
            if state.get(t) == 1:
                found.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)
    return found


def test_there_are_no_import_circles():
    # A package's __init__ re-exporting its modules is not a circle of the code's own
    g, _ = graph()
    g = {m: {t for t in ts if not (PKG.joinpath(*t.split(".")[1:], "__init__.py").is_file()
                                   and m.startswith(t + "."))} for m, ts in g.items()}
    assert circles(g) == []


def test_the_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_every_module_has_a_layer():
    missing = sorted({top(m) for m in modules() if top(m) and top(m) not in RANK})
    assert missing == [], f"add {missing} to LAYERS in this test"


def test_no_import_runs_up_a_layer_or_across_families():
    g, _ = graph()
    bad = []
    for m, targets in g.items():
        a = top(m)
        if not a:
            continue
        for t in targets:
            b = top(t)
            if not b or a == b:
                continue
            if RANK[b] > RANK[a]:
                bad.append(f"{m} -> {t} (layer {RANK[a]} imports layer {RANK[b]})")
            elif any(a in s and b in s for s in APART):
                bad.append(f"{m} -> {t} ({a} and {b} stay apart)")
    assert bad == []


def test_no_module_imports_another_modules_private_names():
    _, raw = graph()
    bad = [f"{m} imports {n} from {t}" for m, v in raw.items() for t, names in v
           for n in names if n.startswith("_") and t != m]
    assert bad == []


def test_the_engine_imports_neither_model_family():
    g, _ = graph()
    bad = [f"{m} -> {t}" for m, ts in g.items() if top(m) == "engine" for t in ts
           if top(t) in ("encoder", "decoder", "tasks")]
    assert bad == []


# -- the task seam ----------------------------------------------------------------------------

def missing_hooks(cls) -> list[str]:
    from dynsdpb.engine.task import HOOKS
    return [h for h in HOOKS if not callable(getattr(cls, h, None))]


def task_classes():
    from dynsdpb.decoder.task import CausalLMTask
    from dynsdpb.encoder.task import SequenceClassification, SequenceRegression
    return [SequenceClassification, SequenceRegression, CausalLMTask]


@pytest.mark.parametrize("cls", task_classes(), ids=lambda c: c.__name__)
def test_every_task_implements_every_hook_of_the_seam(cls):
    assert missing_hooks(cls) == []


def test_a_task_missing_a_hook_is_caught():
    from dynsdpb.encoder.task import SequenceClassification

    class NoLoss(SequenceClassification):
        loss = None   # a subclass that lost its loss hook
    assert missing_hooks(NoLoss) == ["loss"]


def test_the_hooks_list_is_the_protocols():
    from dynsdpb.engine.task import HOOKS, Task
    declared = {n for n in vars(Task) if not n.startswith("_")} - set(Task.__annotations__)
    assert declared == set(HOOKS)


def test_the_loop_calls_nothing_on_a_task_but_the_seam():
    """engine/train.py reaches a task only through `task.X` / `self.task.X` with X in the
    Protocol (hooks and attributes)."""
    from dynsdpb.engine.task import Task
    from dynsdpb.engine.task import OPTIONAL_HOOKS
    allowed = ({n for n in vars(Task) if not n.startswith("_")} | set(Task.__annotations__)
               | set(OPTIONAL_HOOKS))
    tree = ast.parse((PKG / "engine" / "train.py").read_text(encoding="utf-8"))
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            v = node.value
            if (isinstance(v, ast.Name) and v.id == "task") or (
                    isinstance(v, ast.Attribute) and v.attr == "task"
                    and isinstance(v.value, ast.Name) and v.value.id == "self"):
                used.add(node.attr)
    assert used and used <= allowed, sorted(used - allowed)


def test_the_wheel_lists_every_subpackage():
    """pyproject.toml names its packages one by one: a new subpackage missing there would be
    left out of the wheel (tests/test_install.py then fails only on the code paths it runs)."""
    import tomllib
    listed = set(tomllib.loads((PKG.parent / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = {".".join(p.parent.relative_to(PKG.parent).parts) for p in PKG.rglob("__init__.py")
             if "_workbench" not in p.parts}
    assert found - listed == set()
