"""Autoregressive models built on arkern ops."""

from arkern.models.gated_pixelcnn import GatedPixelCNN
from arkern.models.pixelcnn import PixelCNN
from arkern.models.pixelcnnpp import PixelCNNpp
from arkern.models.wavenet import WaveNet, WaveNetConfig

__all__ = ["WaveNet", "WaveNetConfig", "PixelCNN", "GatedPixelCNN", "PixelCNNpp"]
