"""PlantedLinear: the fully connected counterpart of PlantedConv2d.

Planting into the last conv layer grows the input of fc1 by ``p * H * W`` features (the
flattened planted channels, which come last in the flattened order). The forward splits the
product by block so autograd never computes a gradient for the frozen block::

    y[:, :O_f] = x[:, :I_f] @ frozen^T + x[:, I_f:] @ in^T + frozen_bias
    y[:, O_f:] = x @ out^T + out_bias
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plantops.planted_conv import _check_tensor, _PlantedLayer


class PlantedLinear(_PlantedLayer):
    def __init__(self, frozen_weight: Tensor, frozen_bias: Optional[Tensor] = None):
        super().__init__()
        _check_tensor(frozen_weight, "frozen_weight", 2, optional=False)
        _check_tensor(frozen_bias, "frozen_bias", 1)
        self._init_blocks(frozen_weight, frozen_bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "PlantedLinear":
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"from_linear expects an nn.Linear, got {type(linear).__name__}")
        return cls(linear.weight, linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.total_in:
            raise ValueError(f"PlantedLinear expects {self.total_in} input features "
                             f"({self.frozen_in} frozen + {self.planted_in} planted), "
                             f"got input of shape {tuple(x.shape)}")
        frozen_part = F.linear(x[..., :self.frozen_in], self.frozen_weight, self.frozen_bias)
        if self.planted_in:
            frozen_part = frozen_part + F.linear(x[..., self.frozen_in:], self.in_weight)
        if not self.planted_out:
            return frozen_part
        planted_part = F.linear(x, self.out_weight, self.out_bias)
        return torch.cat([frozen_part, planted_part], -1)

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding the whole (assembled) weight, for export."""
        w = self.frozen_weight
        return self._export_into(nn.Linear(self.total_in, self.total_out,
                                           bias=self.frozen_bias is not None,
                                           device=w.device, dtype=w.dtype))

    def extra_repr(self) -> str:
        return (f"frozen {self.frozen_in}->{self.frozen_out}, "
                f"planted in={self.planted_in} out={self.planted_out}")
