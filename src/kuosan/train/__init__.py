from kuosan.train.checkpoint import CheckpointError
from kuosan.train.ema import EMA, ema_decay_at
from kuosan.train.trainer import Trainer, TrainingDiverged

__all__ = ["CheckpointError", "EMA", "Trainer", "TrainingDiverged", "ema_decay_at"]
