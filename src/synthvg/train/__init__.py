"""Training Robin from synthvg datasets (plain code; the Prefect flow is in ``synthvg.flows.train``).

:mod:`.config` (the YAML), :mod:`.data` (mixtures by SQL, task templates, tokenisation),
:mod:`.trainer` (transformers' Trainer, per-group learning rates, export with a manifest).
"""

from synthvg.train.config import TrainConfig, load_train_config

__all__ = ["TrainConfig", "load_train_config"]
