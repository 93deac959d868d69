"""Model cards: a saved model folder gets a README.md in the Hub's format (YAML metadata, then
text): the base model, the dataset, the method and its formula, the config, the run's test
metrics against the vanilla arm of the same seed when the experiment has one, and the command
that reproduces the run. `from_pretrained` ignores README.md, so the folder loads as before."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import yaml

from dynsdpb.catalog import BUILTIN_DATASETS, BUILTIN_MODELS
from dynsdpb.config import FIELDS, RunConfig
from dynsdpb.engine.schedules import describe

CARD = "README.md"
PIPELINE = {"classification": "text-classification", "regression": "text-classification",
            "causal-lm": "text-generation"}
METHOD_NAMES = {"vanilla": "plain fine-tuning (the vanilla baseline)",
                "refeed": "the re-feed control (DLB's batch layout, alpha = 0)",
                "dlb": "DLB: self-distillation from the last mini-batch",
                "dynsdpb": "DynSDPB: dynamic self-distillation from the previous mini-batch"}


def base_model(name: str) -> str | None:
    """The Hub id of the base model, when there is one (a built-in's, or a hub id given)."""
    if name in BUILTIN_MODELS:
        return BUILTIN_MODELS[name].hub_id or None
    if "/" in name and not Path(name).expanduser().exists():
        return name
    return None


def tags(method: str) -> list[str]:
    return list(dict.fromkeys(["dynsdpb", "self-distillation", method]))


def reproduce_command(cfg: RunConfig) -> str:
    """`dynsdpb train` with every field that differs from the defaults as its flag."""
    default = RunConfig()
    parts = ["dynsdpb", "train"]
    for name in FIELDS:
        v = getattr(cfg, name)
        if v != getattr(default, name):
            parts += ["--" + name.replace("_", "-"),
                      str(v).lower() if isinstance(v, bool) else str(v)]
    return " ".join(shlex.quote(p) for p in parts)


def _num(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def metrics_table(summary: dict, vanilla: dict | None) -> str:
    keys = [k for k, v in summary.items() if k.startswith("test_") and k != "test_size"
            and isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not keys:
        return "No test metrics were recorded for this run.\n"
    if vanilla is None:
        rows = ["| metric | this model |", "|---|---|"]
        rows += [f"| {k[5:]} | {_num(summary[k])} |" for k in keys]
        return "\n".join(rows) + "\n\nThe experiment had no vanilla arm with this seed.\n"
    rows = ["| metric | this model | vanilla (same seed) | difference |", "|---|---|---|---|"]
    for k in keys:
        v = vanilla.get(k)
        diff = (_num(summary[k] - v) if isinstance(v, (int, float)) else "")
        rows.append(f"| {k[5:]} | {_num(summary[k])} | {_num(v) if v is not None else ''} | "
                    f"{diff} |")
    n = summary.get("test_size")
    return ("\n".join(rows) + f"\n\nOne seed ({summary.get('seed')}), one test set"
            + (f" of {n} samples" if n else "") + ": a single paired difference, not an "
            "interval; run several seeds (`dynsdpb compare --seeds 0,1,2`) before calling a "
            "winner.\n")


def render(meta: dict, title: str, facts: list[str], formula: str, results: str,
           config: dict, reproduce: list[str]) -> str:
    """A card: YAML metadata between --- lines, then the sections every card has."""
    return "\n".join(["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "",
                      f"# {title}", "", *[f"- {f}" for f in facts], "",
                      "## Method and formula", "", formula, "",
                      "## Results", "", results,
                      "## Config", "", "```yaml",
                      yaml.safe_dump(config, sort_keys=False).strip(), "```", "",
                      "## Reproduce", "", *reproduce, ""])


def card_text(cfg: RunConfig, summary: dict | None = None, vanilla: dict | None = None,
              *, adapter: bool = False, task: str | None = None) -> str:
    task = task or (summary or {}).get("task") or "classification"
    meta = {"library_name": "peft" if adapter else "transformers",
            "pipeline_tag": PIPELINE.get(task, "text-classification"),
            "tags": tags(cfg.method)}
    base = base_model(cfg.model)
    if base:
        meta["base_model"] = base
    if "/" in cfg.dataset and not Path(cfg.dataset).expanduser().exists():
        meta["datasets"] = [cfg.dataset.split(":")[0]]
    formula = (summary or {}).get("formula") or describe(cfg, task)
    ds = BUILTIN_DATASETS.get(cfg.dataset)
    dataset = f"`{cfg.dataset}`" + (f" (built-in: {ds.description})" if ds else "")
    model = f"`{cfg.model}`" + (f" ({base})" if base and base != cfg.model else "")
    facts = [f"**Base model:** {model}", f"**Dataset:** {dataset}", f"**Task:** {task}",
             f"**Method:** {METHOD_NAMES.get(cfg.method, cfg.method)} "
             f"(schedule `{cfg.resolved_schedule}`)",
             f"**Saved as:** {'a PEFT adapter' if adapter else 'a transformers model'}; "
             "load it with `from_pretrained` on this folder."]
    results = (metrics_table(summary, vanilla) if summary
               else "Test metrics were not computed for this save.\n")
    return render(meta, f"{cfg.model.split('/')[-1]} fine-tuned with {cfg.method} on "
                  f"{cfg.dataset.split('/')[-1]}", facts, formula, results, cfg.to_dict(),
                  ["With the DynSDPB Workbench installed (`pip install .` in its repository):",
                   "", "```bash", reproduce_command(cfg), "```"])


def write_card(folder: Path, cfg: RunConfig, summary: dict | None = None,
               vanilla: dict | None = None, task: str | None = None) -> Path:
    folder = Path(folder)
    adapter = (folder / "adapter_config.json").is_file()
    path = folder / CARD
    path.write_text(card_text(cfg, summary, vanilla, adapter=adapter, task=task),
                    encoding="utf-8")
    return path


def write_experiment_cards(exp_path: Path) -> list[Path]:
    """A card in every saved model folder of an experiment (arm folders with model/), with
    the test metrics of the vanilla arm of the same seed when there is one."""
    exp_path = Path(exp_path)
    arms = {}
    for d in sorted(p for p in exp_path.iterdir() if p.is_dir()):
        cfg_p, sum_p = d / "config.json", d / "summary.json"
        if cfg_p.is_file():
            arms[d.name] = (d, json.loads(cfg_p.read_text(encoding="utf-8")),
                            json.loads(sum_p.read_text(encoding="utf-8"))
                            if sum_p.is_file() else None)
    from dynsdpb.config import from_dict
    out = []
    for name, (d, raw, summary) in arms.items():
        if not (d / "model").is_dir() or summary is None:
            continue
        cfg = from_dict(raw, check=False)
        van = arms.get(f"vanilla-s{cfg.seed}")
        vanilla = van[2] if van and cfg.method != "vanilla" else None
        out.append(write_card(d / "model", cfg, summary, vanilla))
    return out
