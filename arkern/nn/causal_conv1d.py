"""CausalConv1d: nn.Conv1d that only looks back in time, with a one-step decode (drop-in for nn.Conv1d)."""

from __future__ import annotations

import torch
from torch import nn

from arkern.ops.causal_conv1d import BACKENDS, UPDATE_BACKENDS, causal_conv1d, causal_conv1d_update


class CausalConv1d(nn.Conv1d):
    """Causal (left-padded) dilated/grouped 1-D convolution; same parameters and state_dict keys as nn.Conv1d.

    Args:
        in_channels, out_channels, kernel_size, dilation, groups, bias, device, dtype: as nn.Conv1d
            (stride 1; the padding is implicit: (kernel_size - 1) * dilation steps on the left).
        activation: None or "silu", fused into the op.

    Shapes: forward x (B, in_channels, T) -> (B, out_channels, T); decode state (B, in_channels, S0) with
    S0 = (kernel_size - 1) * dilation.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1, groups: int = 1,
                 bias: bool = True, activation: str | None = None, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=dilation,
                         groups=groups, bias=bias, device=device, dtype=dtype)
        if activation not in (None, "silu"):
            raise ValueError(f"CausalConv1d: activation must be None or 'silu', got {activation!r}")
        self.activation = activation
        self.backend: str | None = None  # force an arkern backend for this layer (None: fastest available)
        # Backend availability is looked up eagerly once, so that torch.compile(fullgraph=True) of a model
        # whose first call is compiled never has to trace the dispatcher queries behind it.
        BACKENDS.warm()
        UPDATE_BACKENDS.warm()

    @property
    def state_len(self) -> int:
        """S0 = (kernel_size - 1) * dilation: how many past inputs the decode state keeps."""
        return (self.kernel_size[0] - 1) * self.dilation[0]

    def forward(self, x: torch.Tensor, initial_state: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, in_channels, T), initial_state (B, in_channels, S0) or None (zeros) -> (B, out_channels, T)."""
        return causal_conv1d(x, self.weight, self.bias, self.dilation[0], self.groups, self.activation,
                             initial_state, backend=self.backend)

    def step(self, x_t: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Decode: x_t (B, in_channels) or (B, in_channels, t) -> (B, out_channels[, t]); `state` (from
        :meth:`init_state`, shift register) is updated in place."""
        return causal_conv1d_update(x_t, state, self.weight, self.bias, self.dilation[0], self.groups,
                                    self.activation, backend=self.backend)

    def init_state(self, batch_size: int) -> torch.Tensor:
        """A zero decode state (batch_size, in_channels, S0) on the weight's device and dtype."""
        return self.weight.new_zeros((batch_size, self.in_channels, self.state_len))

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", activation={self.activation!r}" if self.activation else "")
