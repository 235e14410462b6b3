"""arkern: masked and causal convolutions as fast torch ops, and fast sampling of convolutional
autoregressive models (PixelCNN, WaveNet families)."""

from arkern import decode, masks, models, nn, ops
from arkern.backends import BackendUnavailableError, available_backends, last_backend
from arkern.evaluation import evaluate
from arkern.pretrained import load
from arkern.sampling import generate

__version__ = "0.1.0"

__all__ = ["ops", "nn", "masks", "models", "decode", "generate", "load", "evaluate", "available_backends",
           "last_backend", "BackendUnavailableError", "__version__"]
