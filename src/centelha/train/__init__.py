"""Training: one loop (`loop.py`) driven by a `RunConfig` (`config.py`)."""

from centelha.train.config import RunConfig, TrainConfig, load_run_config
from centelha.train.loop import TrainResult, train

__all__ = ["RunConfig", "TrainConfig", "TrainResult", "load_run_config", "train"]
