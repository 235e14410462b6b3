"""arkern ops: functional faces of the `torch.ops.arkern.*` operators, with backend choice.

Importing this module defines every schema, then loads the compiled kernels (if built).
"""

from arkern._ext import load_extension
from arkern.backends import last_backend
from arkern.ops.masked_linear import masked_linear

load_extension()

__all__ = ["masked_linear", "last_backend"]
