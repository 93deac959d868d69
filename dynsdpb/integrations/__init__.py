"""The method in other people's training code: `DynSDPBTrainer`, a `transformers.Trainer` that
distils from the previous mini-batch (hf.py)."""
from dynsdpb.integrations.hf import DynSDPBTrainer, method_config

__all__ = ["DynSDPBTrainer", "method_config"]
