"""nn layers built on arkern ops (drop-in replacements for nn.Conv1d / nn.Conv2d / nn.Linear) and the blocks
the models are made of."""

from arkern.nn.blocks import ConcatELU, DownShift, Gate, Residual, RightShift
from arkern.nn.causal_conv1d import CausalConv1d
from arkern.nn.masked_conv2d import MaskedConv2d, masked_conv_mask
from arkern.nn.masked_linear import MaskedLinear
from arkern.nn.shifted_conv2d import ShiftedConv2d, ShiftedConvTranspose2d

__all__ = ["CausalConv1d", "MaskedConv2d", "MaskedLinear", "ShiftedConv2d", "ShiftedConvTranspose2d", "Residual",
           "DownShift", "RightShift", "Gate", "ConcatELU", "masked_conv_mask"]
