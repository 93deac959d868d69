"""One frozen dataclass describes a run.

It drives the CLI (`--set key=value`), the app's form (labels and help texts come from the
field metadata), save/load (YAML or JSON) and every checkpoint. The vanilla baseline is the
same config with `method: vanilla`, so both arms share seed, data order, optimizer and loop.

`validate(cfg)` checks every field in one place and returns all problems at once; the CLI and
the app both use it. Checks that need the model or the data (max_len within the model's
limit, the label column) happen when those are loaded, with the same kind of message.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from dynsdpb.catalog import BUILTIN_MAX_LEN, CLASSIFICATION_DATASETS, DECODERS, GENERATION_DATASETS
from dynsdpb.errors import ConfigError, Problem

# refeed: DLB's batch layout with alpha = 0 (the carried half trained on twice, no KD): the
# control arm that tells how much of a distilling arm's gain is the re-feed alone.
METHODS = ("vanilla", "refeed", "dlb", "dynsdpb")
TEACHER_MODES = ("train", "eval")
SCHEDULES = ("auto", "static", "warmup", "linear", "dynsdpb-v1")
TASKS = ("auto", "classification", "regression", "causal-lm")
BUDGETS = ("epochs", "compute")
GRANULARITIES = ("sample", "batch", "token")
FINETUNES = ("lora", "full")
KD_CACHES = ("topk", "full")
SAVE_FORMATS = ("adapter", "merged")
TAU_DIRECTIONS = ("soften-uncertain", "sharpen-uncertain")
DEVICES = ("auto", "cpu", "cuda")
# Views for text (encoder/views.py): how each training forward of a sample is augmented.
AUGMENTS = ("none", "token-mask", "word-dropout", "span-cutoff")
# Llama-family attention and MLP projections: the usual LoRA targets.
LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
# val_size/test_size 0 (the default) = auto: this share of the usable rows (after the dedup),
# at most these many. A 300-row upload then trains on 240 without touching a field, and a
# large dataset gets the fixed 400/800 of earlier versions. A number given is used as is.
AUTO_SHARE, AUTO_VAL_MAX, AUTO_TEST_MAX = 0.1, 400, 800


# Temperatures for causal LMs. A decoder distils through the top-k teacher cache (kd_cache
# topk), and SmolLM2's top-64 tokens hold about 94% of its probability mass at tau 1, 56% at
# 1.5 and 6% at 3 (docs/method.md section 5): at the encoder defaults (tau 3, tau_max 6) the
# coarsened KL keeps little of the teacher. A decoder config gets these values for the fields
# it does not set (`from_dict` without a base, the CLI, presets, Setup, the Self-training
# page, sweeps); a value given is used as is.
DECODER_TEMPERATURES = {"tau": 1.0, "tau_0": 1.0, "tau_min": 1.0, "tau_max": 1.5}
ENCODER_TEMPERATURES = {"tau": 3.0, "tau_0": 3.0, "tau_min": 1.0, "tau_max": 6.0}
# RunConfig's tau fields default to None, "the model family's value": __post_init__ fills them
# from the two dicts above, so RunConfig(model="smollm2-135m") built in Python gets the
# decoder temperatures as the CLI and the app do. (replace() keeps the values a config has.)
# Below this mean cached top-k mass a decoder run warns (status.json, CLI, Setup by tau).
KD_MASS_WARN = 0.5


def _f(default, help: str, group: str, choices: tuple | None = None, **kw):
    meta = {"help": help, "group": group}
    if choices:
        meta["choices"] = choices
    meta.update(kw)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class RunConfig:
    # --- what to train -------------------------------------------------------------------
    model: str = _f("minilm-l6", "Built-in model name (see `dynsdpb list models`), a local "
                    "folder with a transformers model, or a hub id such as `bert-base-uncased` "
                    "(needs network).", "model")
    trust_remote_code: bool = _f(False, "Allow the model's own Python code to run when loading "
                                 "it. Off unless you trust the model's source.", "model")
    dataset: str = _f("tweets-sentiment", "Built-in dataset name (see `dynsdpb list datasets`), "
                      "a local .csv/.jsonl/.parquet file, or a hub id such as `nyu-mll/glue:rte` "
                      "(needs network).", "data")
    task: str = _f("auto", "classification or regression (encoders), causal-lm (decoders: "
                   "prompt -> target text). `auto`: causal-lm for a decoder model or a "
                   "generation dataset, else inferred from the labels "
                   "(numbers with many distinct values mean regression).", "data", TASKS)
    text_column: str = _f("text", "Column holding the text (the first sentence for pairs).", "data")
    text_pair_column: str = _f("", "Column holding the second sentence for sentence-pair tasks; "
                               "empty for single-sentence tasks.", "data")
    label_column: str = _f("label", "Column holding the label (class name, class id or number).",
                           "data")
    min_confidence: float = _f(0.0, "tweets-sentiment only: keep tweets whose annotator "
                               "confidence is at least this (0 keeps all).", "data")
    max_train_samples: int = _f(4000, "Use at most this many training examples (0 = all).", "data")
    val_size: int = _f(0, "Examples held out for validation (model selection, live curves). "
                       f"0 = auto: {AUTO_SHARE:.0%} of the usable rows, at most {AUTO_VAL_MAX}.",
                       "data")
    test_size: int = _f(0, "Examples held out for the final test; never used for selection. "
                        f"0 = auto: {AUTO_SHARE:.0%} of the usable rows, at most "
                        f"{AUTO_TEST_MAX}.", "data")
    split_seed: int = _f(0, "Seed of the train/validation/test split. Kept apart from `seed` so "
                         "every arm and seed of an experiment sees the same three sets.", "data")
    max_len: int = _f(64, "Truncate inputs to this many tokens.", "data")
    label_noise: float = _f(0.0, "Classification: share of training labels flipped to another "
                            "class (drawn from split_seed, the same for every arm and seed); "
                            "validation and test keep their true labels. 0 = none.", "data")

    # --- method ---------------------------------------------------------------------------
    method: str = _f("dynsdpb", "vanilla: plain fine-tuning (CE). refeed: DLB's batch layout "
                     "(half of each batch re-fed from the previous step) with alpha = 0, the "
                     "control arm that separates re-feeding from distilling. dlb: "
                     "self-distillation from the "
                     "last mini-batch with fixed alpha and tau. dynsdpb: alpha and tau adjusted "
                     "per sample from the previous predictions' uncertainty and margin.",
                     "method", METHODS)
    schedule: str = _f("auto", "alpha/tau schedule of the dlb arm. auto or static: fixed alpha and "
                       "tau. warmup: alpha=0 for `warmup_alpha_steps`, then static. linear: alpha "
                       "ramps from 0 to alpha_max over the run. The dynsdpb arm always uses "
                       "dynsdpb-v1 (set its options below), so one experiment can compare both.",
                       "method", SCHEDULES)
    alpha: float = _f(0.5, "Weight of the distillation term for static and warmup schedules.",
                      "method")
    tau: float = _f(None, "Softmax temperature for static, warmup and linear schedules. "
                    "Default: the model family's (encoders 3, decoders 1).", "method")
    alpha_max: float = _f(1.0, "Upper bound of alpha for dynsdpb-v1 and linear.", "method")
    tau_0: float = _f(None, "dynsdpb-v1: base temperature, scaled by uncertainty. Default: the "
                      "model family's (encoders 3, decoders 1).", "method")
    tau_min: float = _f(None, "dynsdpb-v1: lowest temperature allowed. Default: the model "
                        "family's (encoders and decoders 1).", "method")
    tau_max: float = _f(None, "dynsdpb-v1: highest temperature allowed. Default: the model "
                        "family's (encoders 6, decoders 1.5).", "method")
    granularity: str = _f("sample", "dynsdpb-v1: one alpha/tau per sample (decoders: per "
                          "sequence, from the mean over its target tokens), per token (decoders "
                          "only), or one per batch from "
                          "the mean uncertainty and margin.", "method", GRANULARITIES)
    tau_direction: str = _f("soften-uncertain", "dynsdpb-v1: uncertain predictions get a higher "
                            "temperature (soften) or a lower one (sharpen).", "method",
                            TAU_DIRECTIONS)
    warmup_alpha_steps: int = _f(50, "warmup schedule: steps with alpha = 0 before distilling.",
                                 "method")
    budget: str = _f("epochs", "epochs: each step adds `batch_size` new samples (distilling arms "
                     "forward twice as many). compute: each step forwards `batch_size` samples "
                     "in every arm (half of them carried), equal compute.", "method", BUDGETS)
    teacher_mode: str = _f("train", "Where the teacher logits come from. train (DLB): the "
                           "step's own train-mode forward, dropout included. eval [ours]: one "
                           "extra no-grad forward of the new chunk without dropout (same "
                           "weights, before the update), so the target carries no dropout "
                           "noise.", "method", TEACHER_MODES)
    augment: str = _f("none", "Views for text (encoders), as DLB's second augmented view of an "
                      "image: every training forward of a sample sees its own view, drawn from "
                      "(seed, sample, step), so a carried sample's second pass sees another view "
                      "than the pass that made its soft target. Every arm gets the same kind of "
                      "views (vanilla and refeed too); evaluation never augments. token-mask: "
                      "tokens replaced by the mask token; word-dropout: words removed; "
                      "span-cutoff: one span of each segment removed. none: the same tokens "
                      "twice.", "method", AUGMENTS)
    augment_p: float = _f(0.1, "Views: the share of tokens masked (token-mask), of words "
                          "dropped (word-dropout) or of each segment cut (span-cutoff).",
                          "method")

    # --- decoder models (causal LM); encoders ignore these ------------------------------
    finetune: str = _f("lora", "Decoder models: lora trains small low-rank adapters on a frozen "
                       "base (the arms of an experiment share one base in memory); full trains "
                       "every weight (a full copy plus AdamW state per arm). Not used by "
                       "encoder models: they always fine-tune every weight.", "decoder",
                       FINETUNES)
    lora_r: int = _f(8, "Decoder models, finetune=lora: adapter rank.", "decoder")
    lora_alpha: float = _f(16.0, "Decoder models, finetune=lora: adapter scale (the update is "
                           "multiplied by lora_alpha / lora_r; usually 2 x lora_r).", "decoder")
    lora_dropout: float = _f(0.05, "Decoder models, finetune=lora: dropout on the adapter's "
                             "input, in [0, 1).", "decoder")
    lora_target_modules: str = _f(LORA_TARGETS, "Decoder models, finetune=lora: comma-separated "
                                  "names of the Linear modules that get an adapter (Llama-style: "
                                  "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj).",
                                  "decoder")
    kd_cache: str = _f("topk", "Decoder models: what the teacher cache keeps per target token. "
                       "topk: the top_k teacher log-probs at tau plus the rest's mass (KD is the "
                       "exact KL of the two distributions coarsened to {top-k, rest}; accurate at "
                       "tau near 1, far weaker than the full KL at tau >= 3, see docs/method.md "
                       "§5). full: all logits in fp16 (V x 2 bytes per token).", "decoder",
                       KD_CACHES)
    top_k: int = _f(64, "Decoder models, kd_cache=topk: teacher tokens kept per target token. "
                    "Not used by encoder models.", "decoder")
    save_format: str = _f("adapter", "Decoder models, finetune=lora: save the adapter only (PEFT "
                          "format, a few MB) or the base with the adapter merged in (a plain "
                          "transformers model). Full fine-tuning always saves the whole model.",
                          "decoder", SAVE_FORMATS)
    max_new_tokens: int = _f(16, "Decoder models: tokens generated per answer when evaluating "
                             "(greedy); the answer is the last number in the generation.",
                             "decoder")
    eval_generations: int = _f(4, "Decoder models: sample generations (prompt, generation, "
                               "extracted answer, gold) stored per evaluation in samples.jsonl "
                               "(0 = none).", "decoder")

    # --- optimisation ---------------------------------------------------------------------
    steps: int = _f(200, "Optimizer steps.", "optim")
    batch_size: int = _f(16, "New samples per step (see `budget`). Must be even for dlb/dynsdpb.",
                         "optim")
    lr: float = _f(5e-5, "Peak learning rate of AdamW.", "optim")
    weight_decay: float = _f(0.01, "AdamW weight decay.", "optim")
    warmup_ratio: float = _f(0.1, "Share of steps with linear learning-rate warmup, then linear "
                             "decay to 0.", "optim")
    grad_clip: float = _f(1.0, "Clip the gradient norm to this (0 = no clipping).", "optim")
    seed: int = _f(0, "Seed for head init, data order and dropout. Arms of an experiment that "
                   "differ only in `method` share it.", "optim")

    # --- bookkeeping ----------------------------------------------------------------------
    eval_every: int = _f(50, "Evaluate on the validation set every this many steps (and at the "
                         "end).", "run")
    eval_on_start: bool = _f(False, "Also evaluate once before the first step, as a record of "
                             "step 0 (Trainer's eval_on_start): the charts start from the "
                             "untrained model's score.", "run")
    probe_size: int = _f(64, "Training samples in the fixed probe set used for `probe_drift`.",
                         "run")
    checkpoint_every: int = _f(100, "Save a resumable checkpoint every this many steps (0 = only "
                               "at the end).", "run")
    save_model: bool = _f(True, "Save the fine-tuned model (safetensors) when the run ends.", "run")
    device: str = _f("auto", "auto uses CUDA when present (bf16 autocast), else CPU.", "run",
                     DEVICES)
    compile: bool = _f(False, "Compile the model with torch.compile: the first steps are slower "
                       "(compiling), later ones may be faster; CUDA mainly (on CPU it needs a "
                       "C++ compiler). Compiled dropout draws its own random masks, so a "
                       "compiled run does not repeat an uncompiled one step for step.", "run")
    name: str = _f("", "Optional run name; a safe one is derived when empty.", "run")

    # ------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        unset = [k for k in DECODER_TEMPERATURES if getattr(self, k) is None]
        if unset:
            try:
                decoder = is_causal_lm(self)
            except Exception:  # noqa: BLE001 - an unreadable model folder: validate says so
                decoder = False
            family = DECODER_TEMPERATURES if decoder else ENCODER_TEMPERATURES
            for k in unset:
                object.__setattr__(self, k, family[k])   # frozen: filled once, at creation

    def replace(self, **kw) -> "RunConfig":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def resolved_schedule(self) -> str:
        """The schedule a run actually uses: none for vanilla, dynsdpb-v1 for dynsdpb, and
        `schedule` for dlb (auto meaning static)."""
        if self.method == "vanilla":
            return "none"
        if self.method == "refeed":
            return "refeed"
        if self.method == "dynsdpb":
            return "dynsdpb-v1"
        return "static" if self.schedule == "auto" else self.schedule

    def split_sizes(self, n: int) -> tuple[int, int]:
        """(validation, test) sizes for n usable rows: the configured counts, or for 0 (auto)
        AUTO_SHARE of the rows, at least 1, at most AUTO_VAL_MAX / AUTO_TEST_MAX."""
        auto = max(1, int(n * AUTO_SHARE))
        return (self.val_size or min(auto, AUTO_VAL_MAX),
                self.test_size or min(auto, AUTO_TEST_MAX))

    @property
    def distills(self) -> bool:
        return self.method != "vanilla"

    @property
    def chunk_size(self) -> int:
        """New samples per step (method.md §1)."""
        if self.distills and self.budget == "compute":
            return self.batch_size // 2
        return self.batch_size


FIELDS = {f.name: f for f in fields(RunConfig)}


# ---------------------------------------------------------------------------------------
# Which kind of model and dataset a config names, without loading either.

def model_family(name: str) -> str | None:
    """"decoder" (causal LM), "encoder", or None when it cannot be told offline (a hub id).
    A local folder tells by its config.json: `architectures` ending in ForCausalLM or
    LMHeadModel mean a decoder."""
    if name in DECODERS:
        return "decoder"
    if name in BUILTIN_MAX_LEN:
        return "encoder"
    p = Path(name).expanduser() / "config.json"
    if p.is_file():
        try:
            archs = json.loads(p.read_text(encoding="utf-8")).get("architectures") or []
        except (OSError, ValueError, AttributeError):
            return None
        if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
            return "decoder"
        return "encoder" if archs else None
    return None


def is_causal_lm(cfg: RunConfig) -> bool:
    """Does this config train a decoder on prompt -> target text (tasks.CausalLMTask)?
    An explicit `task` decides; `auto` follows the model, else the dataset."""
    if cfg.task != "auto":
        return cfg.task == "causal-lm"
    fam = model_family(cfg.model)
    if fam is not None:
        return fam == "decoder"
    return cfg.dataset in GENERATION_DATASETS


def field_help(name: str) -> str:
    return FIELDS[name].metadata.get("help", "")


# ---------------------------------------------------------------------------------------
# Parsing values typed by a user (CLI --set, YAML, the app's text inputs)

def _coerce(name: str, value: Any) -> Any:
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
            values[k] = _coerce(k, v)
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


def default_temperatures(decoder: bool) -> dict[str, float]:
    """The tau fields' defaults for a decoder (DECODER_TEMPERATURES) or an encoder."""
    return dict(DECODER_TEMPERATURES if decoder else ENCODER_TEMPERATURES)


def with_family_defaults(cfg: RunConfig, given: set[str] | frozenset[str] = frozenset(),
                         decoder: bool | None = None) -> RunConfig:
    """A decoder config with the decoder temperatures in the tau fields not in `given`.
    `decoder` None: told from the config (is_causal_lm); DynSDPBTrainer tells it from the
    logits it sees."""
    if decoder is None:
        try:
            decoder = is_causal_lm(cfg)
        except Exception:  # noqa: BLE001 - an unreadable local model folder: validate says so
            return cfg
    if not decoder:
        return cfg
    return cfg.replace(**{k: v for k, v in DECODER_TEMPERATURES.items() if k not in given})


def topk_temperature_warning(cfg: RunConfig) -> str | None:
    """Setup's and the CLI's warning before a decoder run whose temperatures the top-k cache
    cannot carry (tau above 1.5 for a distilling arm with kd_cache topk), else None."""
    if cfg.kd_cache != "topk" or not is_causal_lm(cfg):
        return None
    hi = max(cfg.tau_max if cfg.method == "dynsdpb" else cfg.tau,
             cfg.tau_0 if cfg.method == "dynsdpb" else 0)
    if hi <= DECODER_TEMPERATURES["tau_max"]:
        return None
    return (f"tau up to {hi:g} with kd_cache topk (top_k {cfg.top_k}): the cached top-k "
            "tokens hold about 56% of a decoder's mass at tau 1.5 and 6% at tau 3 (SmolLM2, "
            "docs/method.md section 5), so KD sees a coarse teacher. Use tau 1-1.5 "
            "(decoder defaults) or kd_cache full; the run logs kd_topk_mass per step")


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


# ---------------------------------------------------------------------------------------
# Validation: every field, all problems at once.

def validate(cfg: RunConfig) -> list[Problem]:
    P: list[Problem] = []

    def bad(name, fix):
        P.append(Problem(name, getattr(cfg, name), fix))

    for name, f in FIELDS.items():
        ch = f.metadata.get("choices")
        if ch and getattr(cfg, name) not in ch:
            bad(name, f"unknown value; use one of {', '.join(ch)}")
    if cfg.method == "dlb" and cfg.schedule == "dynsdpb-v1":
        bad("schedule", "dynsdpb-v1 is the dynsdpb method's schedule; use method=dynsdpb, or a "
            "dlb schedule: auto, static, warmup or linear")
    if not cfg.model.strip():
        bad("model", "give a built-in model name, a local folder or a hub id")
    if not cfg.dataset.strip():
        bad("dataset", "give a built-in dataset name, a local file or a hub id")
    if not cfg.text_column:
        bad("text_column", "name the column that holds the text")
    if not cfg.label_column:
        bad("label_column", "name the column that holds the label")
    elif cfg.label_column in (cfg.text_column, cfg.text_pair_column):
        bad("label_column", "the label must be a column of its own, not the text column")
    if cfg.text_pair_column and cfg.text_pair_column == cfg.text_column:
        bad("text_pair_column", "the second sentence must be another column than text_column "
            "(leave it empty for single-sentence tasks)")
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        bad("lr", "the learning rate must be a number > 0, e.g. 5e-5")
    elif cfg.lr > 1:
        bad("lr", "a learning rate above 1 diverges; try 5e-5")
    if cfg.steps < 1:
        bad("steps", "train for at least 1 step")
    if cfg.batch_size < 1:
        bad("batch_size", "use at least 1 (2 or more, even, for dlb/dynsdpb)")
    elif cfg.method in METHODS and cfg.distills and (cfg.batch_size < 2 or cfg.batch_size % 2):
        bad("batch_size", f"{cfg.method} needs an even batch size >= 2 (half is carried from the "
            f"previous step); try {max(2, cfg.batch_size + cfg.batch_size % 2)}")
    if cfg.max_len < 8:
        bad("max_len", "use at least 8 tokens")
    elif cfg.max_len > BUILTIN_MAX_LEN.get(cfg.model, cfg.max_len):
        bad("max_len", f"{cfg.model} handles at most {BUILTIN_MAX_LEN[cfg.model]} tokens; "
            "lower max_len")
    if not (cfg.weight_decay >= 0):
        bad("weight_decay", "use a number >= 0")
    if not (0 <= cfg.warmup_ratio < 1):
        bad("warmup_ratio", "use a share in [0, 1), e.g. 0.1")
    if not (cfg.grad_clip >= 0):
        bad("grad_clip", "use a number >= 0 (0 turns clipping off)")
    for name in ("alpha", "alpha_max"):
        v = getattr(cfg, name)
        if not (math.isfinite(v) and v >= 0):
            bad(name, "use a number >= 0")
    for name in ("tau", "tau_0", "tau_min", "tau_max"):
        v = getattr(cfg, name)
        if not (math.isfinite(v) and v > 0):
            bad(name, "temperatures must be > 0")
    if cfg.tau_min > 0 and cfg.tau_max > 0 and cfg.tau_min > cfg.tau_max:
        bad("tau_min", f"tau_min must be <= tau_max ({cfg.tau_max})")
    if cfg.warmup_alpha_steps < 0:
        bad("warmup_alpha_steps", "use 0 or more steps")
    if cfg.top_k < 1:
        bad("top_k", "keep at least 1 teacher token")
    _validate_decoder(cfg, bad)
    if cfg.max_train_samples < 0:
        bad("max_train_samples", "use 0 (all) or a positive count")
    if cfg.val_size < 0:
        bad("val_size", "use 0 (auto: 10% of the rows) or hold out at least 1 validation "
            "example (e.g. 200)")
    if cfg.test_size < 0:
        bad("test_size", "use 0 (auto: 10% of the rows) or hold out at least 1 test example "
            "(e.g. 400)")
    if not (0 <= cfg.label_noise < 1):
        bad("label_noise", "use a share in [0, 1), e.g. 0.2 for 20% flipped training labels")
    elif cfg.label_noise and cfg.task in ("regression", "causal-lm"):
        bad("label_noise", f"flips class labels; task {cfg.task} has none: set 0")
    if not (math.isfinite(cfg.augment_p) and 0 <= cfg.augment_p < 1):
        bad("augment_p", "use a share in [0, 1), e.g. 0.1")
    elif cfg.augment != "none" and cfg.augment_p == 0:
        bad("augment_p", f"augment {cfg.augment} with p = 0 draws no views: use e.g. 0.1, or set "
            "augment none")
    if cfg.augment != "none" and is_causal_lm(cfg):
        bad("augment", "views are for encoders: a decoder's target tokens must stay intact and "
            "its prompt views are not implemented; set augment none")
    if not (0 <= cfg.min_confidence <= 1):
        bad("min_confidence", "use a value in [0, 1]")
    if cfg.eval_every < 1:
        bad("eval_every", "evaluate at least every N >= 1 steps")
    if cfg.probe_size < 1:
        bad("probe_size", "use at least 1 probe sample")
    if cfg.checkpoint_every < 0:
        bad("checkpoint_every", "use 0 (only at the end) or a positive step count")
    for name in ("seed", "split_seed"):
        if not (0 <= getattr(cfg, name) < 2 ** 32):
            bad(name, "use a whole number >= 0 and below 2**32, e.g. 0")
    return P


def _validate_decoder(cfg: RunConfig, bad) -> None:
    """Model and dataset of one kind; the decoder fields (checked whatever the model, so a bad
    value is caught before anyone switches to a decoder)."""
    fam = model_family(cfg.model)
    lm = is_causal_lm(cfg)
    gens = ", ".join(GENERATION_DATASETS)
    if fam == "decoder" and cfg.task in ("classification", "regression"):
        bad("task", f"{cfg.model} is a decoder (causal LM); use task auto or causal-lm, or an "
            "encoder model for classification/regression")
    elif lm and fam == "encoder":
        bad("model" if cfg.task == "auto" else "task",
            f"{cfg.model} is an encoder (classification head); "
            + (f"{cfg.dataset} is a generation dataset (prompt -> target text) and needs a "
               f"decoder model such as {next(iter(DECODERS))}, or pick a classification dataset "
               "such as tweets-sentiment" if cfg.task == "auto" else
               "task causal-lm needs a decoder model such as "
               f"{next(iter(DECODERS))}; or set task to auto"))
    elif lm and cfg.dataset in CLASSIFICATION_DATASETS:
        bad("dataset", f"{cfg.dataset} is a classification dataset, but {cfg.model} is a decoder "
            f"(causal LM) that trains on prompt -> target text: use {gens} or a .jsonl/.csv "
            "with prompt and target columns; or pick an encoder model such as minilm-l6")
    elif not lm and cfg.dataset in GENERATION_DATASETS:
        bad("dataset", f"{cfg.dataset} is a generation dataset (prompt -> target text) and needs "
            f"a decoder model such as {next(iter(DECODERS))}"
            + (f"; {cfg.model} is an encoder" if fam == "encoder" else
               "; or set task to causal-lm if the model is a decoder"))
    if cfg.granularity == "token" and not lm:
        bad("granularity", "token is for decoder models (one alpha/tau per target token); "
            "encoders use sample or batch")
    if cfg.lora_r < 1:
        bad("lora_r", "the LoRA rank must be at least 1 (8 is usual)")
    if not (math.isfinite(cfg.lora_alpha) and cfg.lora_alpha > 0):
        bad("lora_alpha", "must be a number > 0 (usually 2 x lora_r, e.g. 16)")
    if not (0 <= cfg.lora_dropout < 1):
        bad("lora_dropout", "use a value in [0, 1), e.g. 0.05")
    mods = [m.strip() for m in cfg.lora_target_modules.split(",")]
    if not any(mods):
        bad("lora_target_modules", f"name at least one Linear module, e.g. {LORA_TARGETS}")
    elif not all(m.isidentifier() for m in mods):
        bad("lora_target_modules", "give module names separated by commas, e.g. q_proj,v_proj "
            "(letters, digits and _ only)")
    if cfg.max_new_tokens < 1:
        bad("max_new_tokens", "generate at least 1 token (16 fits short answers, 256 "
            "rationales)")
    if cfg.eval_generations < 0:
        bad("eval_generations", "use 0 (store none) or a positive count, e.g. 4")


def check_config(cfg: RunConfig) -> RunConfig:
    problems = validate(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


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
