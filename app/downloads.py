"""Files the pages offer for download: a run's saved model kind, a folder as a zip, the
records of arms as a table.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

from app.views import ArmView


def saved_model_kind(model_dir: Path) -> str | None:
    """What a run saved in model/: "model" (a whole transformers model), "LoRA adapter"
    (PEFT, decoders' save_format adapter), or None."""
    if (model_dir / "adapter_config.json").is_file():
        return "LoRA adapter"
    if (model_dir / "config.json").is_file():
        return "model"
    return None


def zip_folder(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(folder.parent))
    return buf.getvalue()


def records_frame(arms: list[ArmView]):
    import pandas as pd
    rows = []
    for a in arms:
        for r in a.records:
            rows.append({"experiment": a.exp_id, "run": a.id, **r})
    return pd.DataFrame(rows)
