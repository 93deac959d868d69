"""Sweeps: a grid or a search (Optuna) over RunConfig fields, each cell run as methods x seeds.

    spec.py  the sweep's spec (sweep.json), its grid and run keys, the runs it plans
    run.py   running it: the CLI's Optuna loop and the app's queue
    read.py  reading it back: cells, heatmaps, dynamics (KD share per cell), listings
"""
