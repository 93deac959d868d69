"""Which task a config gets: the registry of tasks by name, and `prepare`, which loads a
config's data and builds its task once per experiment. The tasks themselves live with their
model family (`encoder.task`, `decoder.task`); the seam they implement is `engine.task.Task`."""
from __future__ import annotations

from dynsdpb.config import RunConfig, is_causal_lm
from dynsdpb.encoder.data import TaskData, load_data, rows_to_taskdata
from dynsdpb.encoder.task import SequenceClassification, SequenceRegression


def _causal_lm(cfg: RunConfig, upload: bytes | None = None):
    # imported when a decoder is asked for: an encoder run never loads the decoder family
    from dynsdpb.decoder.task import CausalLMTask
    return CausalLMTask(cfg, upload=upload)


TASKS = {"classification": SequenceClassification, "regression": SequenceRegression,
         "causal-lm": _causal_lm}


def check_rows(cfg: RunConfig, rows: list[dict], name: str, warnings: list[str] | None = None
               ) -> None:
    """The data checks `prepare` makes (columns, labels or prompt/target, split sizes), on
    rows read from an upload, so a bad file is refused before anything is written."""
    if is_causal_lm(cfg):
        from dynsdpb.decoder.task import split_rows
        split_rows(cfg.replace(dataset=name), rows)
    else:
        rows_to_taskdata(rows, cfg, name, warnings)


def prepare(cfg: RunConfig, data: TaskData | None = None, upload: bytes | None = None):
    """The task of a config with its data loaded and tokenized, once per experiment: every
    arm of an experiment shares the dataset, tokenizer and max_len (and, for LoRA decoders,
    the frozen base model). Decoder models and generation datasets: causal-lm."""
    if is_causal_lm(cfg) and data is None:
        return TASKS["causal-lm"](cfg, upload)
    data = data if data is not None else load_data(cfg, upload)
    return TASKS[data.task](cfg, data)
