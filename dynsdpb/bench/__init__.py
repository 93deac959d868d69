"""Measuring the workbench itself, as ratios measured side by side in one run.

    speed.py    `dynsdpb bench`: step time, throughput against transformers.Trainer, MFU, memory
    decoder.py  the same ratios for the built-in decoder with LoRA and the teacher cache
    app.py      `dynsdpb bench --app`: does watching the Live page slow training down?
"""
