"""The `dynsdpb` command line: one module per command group, the parser in main.py.

    main.py       the parser, `list`, `app` and the entry point (`dynsdpb`, `python -m dynsdpb.cli`)
    args.py       one typed flag per RunConfig field, --set, --config/--preset, --out checks
    run.py        `train`, `compare`, `resume`
    selftrain.py  `selftrain`
    sweep.py      `sweep`
    report.py     `report`
    bench.py      `bench`
"""
