"""The model zoo: one file per family, the registry (`build`, `available`) and the weight loader (`weights.py`)."""
from pipeline.models.registry import (ModelSpec, UnknownModelError, available, build, class_names,
                                      spec)
from pipeline.models.weights import WeightsError

__all__ = ["ModelSpec", "UnknownModelError", "WeightsError", "available", "build", "class_names", "spec"]
