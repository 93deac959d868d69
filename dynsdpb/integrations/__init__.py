"""The method in other people's tools.

    hf.py        DynSDPBTrainer: a transformers.Trainer that distils from the previous mini-batch
                 (the engine's layout, loss and schedules), checkpoints its chain, logs the
                 engine's record keys through Trainer.log, writes a model card
    trackers.py  --report-to tensorboard: the workbench's own records as TensorBoard scalars

`from dynsdpb.integrations import DynSDPBTrainer` needs transformers (installed with the
workbench); trackers.py needs the [tensorboard] extra only when a run asks for it.
"""
__all__ = ["DynSDPBTrainer", "method_config"]


def __getattr__(name: str):
    # Lazy: the command line imports trackers.py without paying for transformers.Trainer.
    if name in __all__:
        from dynsdpb.integrations import hf
        return getattr(hf, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
