"""The run configuration: YAML plus dotted `key=value` overrides, typed and validated before
anything is built (`schema.py`: the sections and their checks; `load.py`: reading, overrides and
writing; `inherit.py`: recipes that start from another).

    cfg = load_config("configs/h14.yaml", ["stages.pretrain.samples=4096", "parallel.strategy=fsdp"])

Every error is a `ConfigError` whose message names the key and the allowed values.
"""
from clipav2.config.load import apply_override, check_data_paths, load_config, parse_yaml, save_config, to_dict, to_yaml
from clipav2.config.schema import (
    SECTIONS,
    AugmentConfig,
    CheckpointConfig,
    Config,
    ConfigError,
    CostConfig,
    DataConfig,
    EvalConfig,
    FaultConfig,
    LogConfig,
    ModelConfig,
    ParallelConfig,
    StageConfig,
    read_deepspeed_json,
)

__all__ = ["SECTIONS", "AugmentConfig", "CheckpointConfig", "Config", "ConfigError", "CostConfig", "DataConfig",
           "EvalConfig", "FaultConfig", "LogConfig", "ModelConfig", "ParallelConfig", "StageConfig", "apply_override",
           "check_data_paths", "load_config", "parse_yaml", "read_deepspeed_json", "save_config", "to_dict", "to_yaml"]
