"""Meta-training: configs and presets, the loop, crash-safe checkpoints (see :mod:`icgd.train.loop`)."""

from icgd.train.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from icgd.train.config import PRESETS, TrainConfig, build_config
from icgd.train.load import load_model
from icgd.train.loop import Trainer, resume, train

__all__ = ["Checkpoint", "PRESETS", "TrainConfig", "Trainer", "build_config", "load_checkpoint", "load_model",
           "resume", "save_checkpoint", "train"]
