"""Fin3R training: the engine (:func:`train`), its typed config, checkpoints and metric logs.

``from fin3r.train import train, TrainConfig, TrainHooks, TrainResult`` (see ``engine.py``).
"""

from fin3r.train.config import TrainConfig
from fin3r.train.engine import TrainHooks, TrainingDiverged, TrainResult, train

__all__ = ["TrainConfig", "TrainHooks", "TrainResult", "TrainingDiverged", "train"]
