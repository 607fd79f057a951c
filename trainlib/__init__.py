"""trainlib: a small, fast, correct PyTorch training core.

The core (engine, data, models, optim, device) imports only torch and numpy; MLflow and Optuna
meet it through callbacks, in trainlib.tracking and trainlib.sweep.
"""

from trainlib.data import (
    DATASET_NAMES,
    DatasetSplits,
    OnTheFlyMNIST1D,
    TensorBatchLoader,
    load_dataset,
    make_loader,
    splits_from_arrays,
)
from trainlib.device import device_name, resolve_device, synchronize
from trainlib.engine import (
    Callback,
    EpochResult,
    History,
    TrainingDiverged,
    evaluate_model,
    train_model,
    train_one_epoch,
)
from trainlib.errors import InvalidArgument
from trainlib.models import MODEL_NAMES, build_model
from trainlib.optim import OPTIMIZER_NAMES, build_optimizer
from trainlib.seeding import seed_everything

__version__ = "0.1.0"

__all__ = [
    "DATASET_NAMES",
    "MODEL_NAMES",
    "OPTIMIZER_NAMES",
    "Callback",
    "DatasetSplits",
    "EpochResult",
    "History",
    "InvalidArgument",
    "OnTheFlyMNIST1D",
    "TensorBatchLoader",
    "TrainingDiverged",
    "build_model",
    "build_optimizer",
    "device_name",
    "evaluate_model",
    "load_dataset",
    "make_loader",
    "resolve_device",
    "seed_everything",
    "splits_from_arrays",
    "synchronize",
    "train_model",
    "train_one_epoch",
]
