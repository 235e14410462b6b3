"""nn layers built on arkern ops: drop-in replacements for nn.Conv1d / nn.Conv2d / nn.Linear."""

from arkern.nn.masked_linear import MaskedLinear

__all__ = ["MaskedLinear"]
