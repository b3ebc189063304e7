"""Training engine: flags (args), strategies, the LightningModule, the lr schedule, callbacks, and train.py's main."""
from src.train.args import TrainConfig, build_peft_config, parse_args
from src.train.schedule import LRSchedule

__all__ = ["TrainConfig", "parse_args", "build_peft_config", "LRSchedule"]
