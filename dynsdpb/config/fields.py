"""The fields of a run: one frozen dataclass (RunConfig) with its choices, defaults and help
texts, and which model family a config names (its temperatures follow the family)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from dynsdpb.catalog import BUILTIN_MAX_LEN, DECODERS, GENERATION_DATASETS

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
