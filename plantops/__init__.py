"""plantops: channel planting (Mitsuno, Nomura, Kurita, ICPR 2020) with fast kernels.

The op: :func:`planted_conv2d` and :class:`PlantedConv2d` (a convolution over a frozen weight
block and trainable planted blocks; gradients only for the planted blocks), with
:class:`PlantedLinear` for the fully connected layer that reads the last conv.
Planting any chain of conv and linear layers (the paper's networks, or a user's
nn.Sequential): :class:`Chain` (plantops/chain.py) and :func:`plant` (plantops/planting.py).
Planting any CNN torch.fx traces (residual, depthwise, branching) by its width groups, the
channels that grow together: :class:`GraphNet` (plantops/graph.py), :func:`width_groups`
(plantops/width_groups.py), the same :func:`plant`.
The search: ``python -m plantops.search --help``.
"""

from plantops.chain import Chain, ChainError
from plantops.kernels import backends
from plantops.planted_conv import PlantedConv2d, planted_conv2d, reference_planted_conv2d
from plantops.planted_linear import PlantedLinear
from plantops.graph import GraphNet
from plantops.planting import export, merge, plant
from plantops.width_groups import WidthGroup, WidthGroupError, width_groups

__version__ = "0.1.0"
__all__ = ["Chain", "ChainError", "GraphNet", "PlantedConv2d", "PlantedLinear", "WidthGroup",
           "WidthGroupError", "backends", "export", "merge", "planted_conv2d", "plant",
           "reference_planted_conv2d", "width_groups", "__version__"]
