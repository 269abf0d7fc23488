"""sparank: does sparse or low-rank regularisation make a classifier easier to fool?

The headline measure is :func:`fgsm_robustness` (PROTOCOL §2): per input, the
first ε along the FGSM ray at which the model misclassifies, as a verified
bracket.
"""

from sparank.attacks import Bounds, fgsm_direction, first_crossing, ray_points
from sparank.data import DATASETS, Dataset, DatasetError, eval_subset, load_dataset, load_digits, read_idx
from sparank.models import build_model, parse_spec
from sparank.robustness import (
    CENSORED,
    CLEAN_WRONG,
    FOOLED,
    NO_DIRECTION,
    MaskingFlags,
    RobustnessResult,
    Status,
    Summary,
    best_of,
    fgsm_robustness,
    masking_flags,
    measure,
)
from sparank.store import Store, StoreError
from sparank.structure import layer_structure, model_structure
from sparank.regularisers import counterpart
from sparank.train import TrainConfig, TrainingBudget, train, train_model, training_budget
from sparank.audit import AuditResult, audit  # issue 11: compress a user's model, compare each copy with it

__version__ = "0.1.0"

__all__ = [
    "CENSORED",
    "CLEAN_WRONG",
    "FOOLED",
    "NO_DIRECTION",
    "DATASETS",
    "AuditResult",
    "Bounds",
    "MaskingFlags",
    "Dataset",
    "DatasetError",
    "Store",
    "StoreError",
    "RobustnessResult",
    "Status",
    "Summary",
    "TrainConfig",
    "TrainingBudget",
    "audit",
    "best_of",
    "build_model",
    "counterpart",
    "fgsm_direction",
    "fgsm_robustness",
    "first_crossing",
    "eval_subset",
    "layer_structure",
    "load_dataset",
    "load_digits",
    "masking_flags",
    "measure",
    "model_structure",
    "read_idx",
    "parse_spec",
    "ray_points",
    "train",
    "train_model",
    "training_budget",
]
