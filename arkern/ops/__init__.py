"""arkern ops: functional faces of the `torch.ops.arkern.*` operators, with backend choice.

Importing this module defines every schema, then loads the compiled kernels (if built).
"""

import sys

from arkern._ext import load_extension
from arkern.backends import OpBackends, last_backend
from arkern.ops.causal_conv1d import causal_conv1d, causal_conv1d_update
from arkern.ops.causal_conv1d_varlen import causal_conv1d_varlen_states
from arkern.ops.masked_conv2d import masked_conv2d
from arkern.ops.masked_linear import masked_linear
from arkern.ops.pixelcnn_decode import pixelcnn_generate
from arkern.ops.pixelcnnpp_decode import pixelcnnpp_generate
from arkern.ops.shifted_conv2d import shifted_conv2d, shifted_conv_transpose2d
from arkern.ops.wavenet_decode import wavenet_generate
from arkern.ops.wavenet_family_decode import wavenet_family_generate

load_extension()
# fill every backend table's availability cache now, so that the first call may happen under torch.compile
for _name in ("causal_conv1d", "masked_conv2d", "masked_linear", "shifted_conv2d", "wavenet_decode",
              "wavenet_family_decode",
              "pixelcnn_decode", "pixelcnnpp_decode", "causal_conv1d_varlen"):
    for _table in vars(sys.modules[f"arkern.ops.{_name}"]).values():
        if isinstance(_table, OpBackends):
            _table.warm()

__all__ = ["causal_conv1d", "causal_conv1d_update", "masked_conv2d", "masked_linear", "shifted_conv2d",
           "shifted_conv_transpose2d", "wavenet_generate", "wavenet_family_generate",
           "pixelcnn_generate", "pixelcnnpp_generate",
           "causal_conv1d_varlen_states", "last_backend"]
