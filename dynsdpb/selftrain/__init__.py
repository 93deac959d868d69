"""Self-training (STaR) and self-correction loops with the engine as the fine-tuning policy.

    run.py    the loop: generate, filter, train, evaluate, round after round
    loops.py  the prompts, the loop options and the CPU demo settings, traces and evaluation
    round.py  one arm's engine task in one round, and the teacher cache it carries
    store.py  a self-training folder on disk and its summary
"""
