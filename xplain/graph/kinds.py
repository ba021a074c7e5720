"""Module kinds of a converted graph, defined once for the model's inventory and the rules.

onnx2torch converts a convolution with asymmetric padding into ``Sequential(OnnxPadStatic,
Conv)``; everything that asks "is this a weight layer, and which module holds the weight?" goes
through :func:`weight_layer` so the answer never differs between the bias inventory
(:meth:`Model.bias_layers`) and LRP.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

#: Layers with a weight (and optional bias) that act linearly on their input.
WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Linear,
)

#: BatchNorm of any dimension (eval mode: an elementwise affine map).
BATCHNORM = nn.modules.batchnorm._BatchNorm


def unwrap(module: nn.Module) -> nn.Module:
    """The module that computes: the last of a non-empty ``Sequential`` (pads come first)."""
    return module[-1] if isinstance(module, nn.Sequential) and len(module) else module


def weight_layer(module: nn.Module) -> nn.Module | None:
    """The conv/linear layer inside ``module`` (itself, or a padded ``Sequential``'s last), or None."""
    layer = unwrap(module)
    return layer if isinstance(layer, WEIGHT_LAYERS) else None


def is_weight_layer(module: nn.Module) -> bool:
    return weight_layer(module) is not None


def prefix_modules(module: nn.Module) -> list[nn.Module]:
    """The modules that run before the weight layer (:func:`unwrap`): a padded conv's pads."""
    return list(module.children())[:-1] if unwrap(module) is not module else []


def direct_layer(layer: nn.Module) -> bool:
    """Whether :func:`forward_with` / :func:`input_gradient` can run ``layer`` as plain aten
    calls: linear layers and convolutions (also transposed) with numeric zero padding. A conv
    with ``padding="same"`` or a non-zero padding mode needs the module's own forward."""
    if isinstance(layer, nn.Linear):
        return True
    return (
        isinstance(layer, nn.modules.conv._ConvNd)
        and not isinstance(layer.padding, str)
        and layer.padding_mode == "zeros"
    )


def forward_with(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``layer``'s linear map with ``weight`` and no bias applied to ``x`` (a :func:`direct_layer`
    layer), outside autograd."""
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight)
    conv = cast(nn.modules.conv._ConvNd, layer)
    return torch.convolution(
        x,
        weight,
        None,
        conv.stride,
        cast(tuple, conv.padding),
        conv.dilation,
        conv.transposed,
        conv.output_padding,
        conv.groups,
    )


def input_gradient(
    layer: nn.Module, s: torch.Tensor, x: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """The transpose of :func:`forward_with` applied to ``s`` (``Wᵀs``, shaped like ``x``): the
    input half of the layer's own backward kernel, without a graph or a second forward. Only
    ``x``'s shape, dtype and device are read (an expanded one-element tensor will do)."""
    if isinstance(layer, nn.Linear):
        return s.matmul(weight)
    conv = cast(nn.modules.conv._ConvNd, layer)
    return torch.ops.aten.convolution_backward(
        s,
        x,
        weight,
        None,
        conv.stride,
        cast(tuple, conv.padding),
        conv.dilation,
        conv.transposed,
        conv.output_padding,
        conv.groups,
        [True, False, False],
    )[0]


def batchnorm_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm in eval mode is ``x * scale + shift``: (scale, shift), per channel."""
    assert (
        bn.running_var is not None and bn.running_mean is not None
    )  # onnx2torch BN: eval-mode stats
    var, mean = bn.running_var.detach(), bn.running_mean.detach()
    gamma = bn.weight.detach() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach() if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    return scale, beta - mean * scale
