"""PlantedBatchNorm: a batch norm over a layer's frozen channels and its planted ones.

Planting ``p`` channels into a conv that a batch norm follows grows that batch norm by ``p``
features (after a flatten, ``p`` times the spatial positions). The frozen features keep the
parent's normalisation as it is evaluated, so the old channels compute exactly the parent's
values; the planted features get a batch norm of their own, trained with them
(docs/method.md, "Planting on any chain").
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BATCH_NORMS = (nn.BatchNorm2d, nn.BatchNorm1d)


class PlantedBatchNorm(nn.Module):
    """A batch norm over a layer's frozen channels and its planted ones.

    The frozen channels keep the parent's normalisation as it is evaluated: its running
    statistics and affine, never updated (whatever the module's mode). The planted channels
    have a batch norm of their own, trained with them: in training mode it normalises with
    the batch's statistics and updates its running ones, in eval mode it uses those, like
    any batch norm. It starts at weight 1, bias 0, mean 0, variance 1.
    """

    def __init__(self, frozen: nn.Module, count: int):
        super().__init__()
        if not isinstance(frozen, BATCH_NORMS):
            raise TypeError(f"PlantedBatchNorm grows a BatchNorm1d/2d, got {type(frozen).__name__}")
        self.frozen = copy.deepcopy(frozen).eval()
        for p in self.frozen.parameters():
            p.requires_grad_(False)
        w = frozen.running_mean
        self.planted = type(frozen)(count, frozen.eps, frozen.momentum, frozen.affine,
                                    device=w.device, dtype=w.dtype)

    @property
    def frozen_features(self) -> int:
        return self.frozen.num_features

    @property
    def planted_features(self) -> int:
        return self.planted.num_features

    def frozen_part(self, x: Tensor) -> Tensor:
        bn = self.frozen
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0,
                            bn.eps)

    def planted_part(self, x: Tensor) -> Tensor:
        return self.planted(x)

    def forward(self, x: Tensor) -> Tensor:
        n = self.frozen_features
        return torch.cat([self.frozen_part(x[:, :n]), self.planted_part(x[:, n:])], 1)

    def train(self, mode: bool = True):
        super().train(mode)
        self.frozen.eval()
        return self

    def to_batch_norm(self) -> nn.Module:
        """A plain batch norm of every feature (the frozen ones' numbers, then the planted)."""
        old, new = self.frozen, self.planted
        merged = copy.deepcopy(old)
        merged.num_features = old.num_features + new.num_features
        with torch.no_grad():
            for name in ("weight", "bias"):
                if getattr(old, name) is not None:
                    setattr(merged, name, nn.Parameter(torch.cat(
                        [getattr(old, name), getattr(new, name)]).detach().clone()))
            for name in ("running_mean", "running_var"):
                merged.register_buffer(name, torch.cat([getattr(old, name),
                                                        getattr(new, name)]).clone())
        merged.train(self.training)
        return merged

    def extra_repr(self) -> str:
        return f"frozen {self.frozen_features}, planted {self.planted_features}"
