"""The engine: DLB's batch layout, the loss, the schedules and the per-step loop. It knows
nothing of a model family: it talks to a task through `task.Task` only.

    layout.py      which sample ids are carried and which are new at each step
    losses.py      CE + alpha * tau^2 * KL on the carried half (the loss parts the charts plot)
    schedules.py   alpha and tau: static, warmup, linear, dynsdpb-v1; the formula text
    task.py        the seam: Batch, View and the Task Protocol every model family implements
    train.py       Arm: one run, one optimizer step at a time, its records and evaluations
    checkpoint.py  an arm's checkpoint: save, load, the data check on resume
    dist.py        data parallel under torchrun / accelerate launch; the device a run uses
    model_card.py  the README.md model card (Hub format) of a saved model folder
"""
