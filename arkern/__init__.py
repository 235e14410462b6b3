"""arkern: masked and causal convolutions as fast torch ops, and fast sampling of convolutional
autoregressive models (PixelCNN, WaveNet families)."""

from arkern import masks, nn, ops
from arkern.backends import BackendUnavailableError, available_backends, last_backend

__version__ = "0.1.0"

__all__ = ["ops", "nn", "masks", "available_backends", "last_backend", "BackendUnavailableError", "__version__"]
