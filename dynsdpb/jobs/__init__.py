"""Background training for the app: a queue of experiments, each in a worker process.

    queue.py   JobManager: the queue and one supervising thread per device
    worker.py  `python -m dynsdpb.jobs.worker EXP_DIR [--resume]`: one experiment in its own process
"""
