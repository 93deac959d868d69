"""One frozen dataclass describes a run.

It drives the CLI (`--set key=value`), the app's form (labels and help texts come from the
field metadata), save/load (YAML or JSON) and every checkpoint. The vanilla baseline is the
same config with `method: vanilla`, so both arms share seed, data order, optimizer and loop.

`validate(cfg)` checks every field in one place and returns all problems at once; the CLI and
the app both use it. Checks that need the model or the data (max_len within the model's
limit, the label column) happen when those are loaded, with the same kind of message.

One job per module: fields.py (RunConfig, its choices and the model family), values.py (text,
mappings and files as a config), check.py (validate). Import from `dynsdpb.config`.
"""
from __future__ import annotations

from dynsdpb.config.check import (  # noqa: F401 - the package's public names
    check_config,
    validate,
)
from dynsdpb.config.fields import (  # noqa: F401 - the package's public names
    AUTO_SHARE,
    AUTO_TEST_MAX,
    AUTO_VAL_MAX,
    AUGMENTS,
    BUDGETS,
    DECODER_TEMPERATURES,
    DEVICES,
    ENCODER_TEMPERATURES,
    FIELDS,
    FINETUNES,
    GRANULARITIES,
    KD_CACHES,
    KD_MASS_WARN,
    LORA_TARGETS,
    METHODS,
    SAVE_FORMATS,
    SCHEDULES,
    TASKS,
    TAU_DIRECTIONS,
    TEACHER_MODES,
    RunConfig,
    default_temperatures,
    field_help,
    is_causal_lm,
    model_family,
    topk_temperature_warning,
    with_family_defaults,
)
from dynsdpb.config.values import (  # noqa: F401 - the package's public names
    coerce,
    dumps,
    from_dict,
    load,
    parse_int_list,
    parse_methods,
    parse_overrides,
    read_mapping,
    save,
)
