"""DynSDPB Workbench engine: dynamic self-distillation from the previous mini-batch.

Layers, lowest first (a module imports only its own layer and lower ones; tests/test_layers.py
checks it): errors, paths, records, metrics, tables, catalog -> store, config -> engine/,
presets, compare -> the model families encoder/ and decoder/ -> tasks (which family a config
gets) -> experiment -> the workflows selftrain/, sweep/, bench/, integrations/ -> jobs/, report
-> cli/. The engine never imports Streamlit. Entry points: `dynsdpb.config.RunConfig`,
`dynsdpb.experiment.create_experiment` / `run_experiment`, `dynsdpb.jobs.queue.JobManager`,
the `dynsdpb` command.
"""
__version__ = "0.1.0"
