"""Cached autoregressive decoding: the incremental layer protocol, decoding state, per-family decoders and the
drivers of the fused samplers. Which family uses which is declared in :mod:`arkern.families`."""

from arkern.decode.incremental import IncrementalLayer, incremental, run_incremental
from arkern.decode.methods import METHODS
from arkern.decode.wavenet import WaveNetState, WaveNetStepper

__all__ = ["METHODS", "WaveNetState", "WaveNetStepper", "IncrementalLayer", "incremental", "run_incremental"]
