"""nnscratch: a small, fast, readable neural-network framework in NumPy."""

from .datasets import CLASS_NAMES, DataError, load_fashion_mnist
from .gradcheck import GradcheckResult, gradcheck
from .io import ModelFileError, load, save
from .layers import Dense, Dropout, Flatten, Layer, ReLU
from .losses import SoftmaxCrossEntropy, softmax
from .model import Sequential
from .optim import Adam, Parameter
from .training import Trainer, TrainingDiverged, TrainingInterrupted

__version__ = "0.1.0"

__all__ = [
    "CLASS_NAMES", "DataError", "ModelFileError", "load", "load_fashion_mnist", "save",
    "Adam", "Dense", "Dropout", "Flatten", "GradcheckResult", "Layer", "Parameter", "ReLU",
    "Sequential", "SoftmaxCrossEntropy", "Trainer", "TrainingDiverged", "TrainingInterrupted",
    "gradcheck", "softmax",
]
