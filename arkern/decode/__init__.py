"""Cached autoregressive decoding: state objects, per-model steppers and the naive reference samplers."""

from arkern.decode.incremental import IncrementalLayer, incremental, run_incremental
from arkern.decode.pixelcnn import sample_image
from arkern.decode.wavenet import WaveNetState, WaveNetStepper

__all__ = ["WaveNetState", "WaveNetStepper", "IncrementalLayer", "incremental", "run_incremental", "sample_image"]
