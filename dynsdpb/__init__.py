"""DynSDPB Workbench engine: dynamic self-distillation from the previous mini-batch.

The engine never imports Streamlit. Entry points: `dynsdpb.config.RunConfig`,
`dynsdpb.experiment.create_experiment` / `run_experiment`, `dynsdpb.jobs.queue.JobManager`, the CLI.
"""
__version__ = "0.1.0"
