"""PlantedConv2d and PlantedLinear: planting, training only the planted blocks, freezing, export."""

import pytest
import torch
from torch import nn

from plantops import PlantedConv2d, PlantedLinear


def grow(conv: nn.Conv2d, planted_in: int, planted_out: int, backend="auto"):
    layer = PlantedConv2d.from_conv(conv, backend=backend)
    layer.plant_inputs(planted_in)
    layer.plant_outputs(planted_out)
    return layer


def test_from_conv_is_exact_and_has_nothing_to_train():
    conv = nn.Conv2d(3, 5, 3, padding=1)
    layer = PlantedConv2d.from_conv(conv)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(layer(x), conv(x))
    assert sum(p.numel() for p in layer.parameters()) == 0


def test_planted_inputs_start_at_zero_so_the_frozen_outputs_are_unchanged():
    conv = nn.Conv2d(3, 5, 3, padding=1)
    layer = grow(conv, planted_in=2, planted_out=0)
    x = torch.randn(2, 5, 8, 8)
    torch.testing.assert_close(layer(x), conv(x[:, :3]))


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_training_moves_only_planted_blocks(backend):
    import plantops
    if backend not in plantops.backends("cpu"):
        pytest.skip(f"{backend} backend not built")
    conv = nn.Conv2d(4, 6, 3, padding=1)
    layer = grow(conv, planted_in=2, planted_out=3, backend=backend)
    frozen_w, frozen_b = layer.frozen_weight.clone(), layer.frozen_bias.clone()
    planted = {n: p.detach().clone() for n, p in layer.named_parameters()}
    assert set(planted) == {"in_weight", "out_weight", "out_bias"}
    opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(3):
        opt.zero_grad()
        layer(torch.randn(2, 6, 7, 7)).square().mean().backward()
        opt.step()
    assert torch.equal(layer.frozen_weight, frozen_w) and torch.equal(layer.frozen_bias, frozen_b)
    for name, p in layer.named_parameters():
        assert not torch.equal(p, planted[name]), f"{name} did not train"


def test_freeze_and_to_conv_keep_the_function():
    layer = grow(nn.Conv2d(4, 6, 3, padding=1, stride=2), planted_in=2, planted_out=3)
    x = torch.randn(2, 6, 9, 9)
    expected = layer(x).detach()
    conv = layer.to_conv()
    assert isinstance(conv, nn.Conv2d) and conv.weight.shape == (9, 6, 3, 3)
    torch.testing.assert_close(conv(x), expected)
    layer.freeze()
    assert sum(p.numel() for p in layer.parameters()) == 0
    torch.testing.assert_close(layer(x), expected)
    assert layer.frozen_weight.shape == (9, 6, 3, 3)


def test_from_conv_rejects_what_it_cannot_express():
    with pytest.raises(ValueError, match="groups=1"):
        PlantedConv2d.from_conv(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(ValueError, match="padding_mode='zeros'"):
        PlantedConv2d.from_conv(nn.Conv2d(4, 4, 3, padding_mode="reflect"))
    with pytest.raises(TypeError, match="nn.Conv2d"):
        PlantedConv2d.from_conv(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="int >= 0"):
        PlantedConv2d.from_conv(nn.Conv2d(4, 4, 3)).plant_outputs(-1)


def test_state_dict_round_trip():
    layer = grow(nn.Conv2d(3, 4, 3, padding=1), planted_in=1, planted_out=2)
    copy = PlantedConv2d.from_conv(nn.Conv2d(3, 4, 3, padding=1))
    copy.plant_inputs(1).plant_outputs(2)
    copy.load_state_dict(layer.state_dict())
    x = torch.randn(1, 4, 5, 5)
    torch.testing.assert_close(copy(x), layer(x))


def test_planted_linear_gradients_and_export():
    linear = nn.Linear(6, 4)
    layer = PlantedLinear.from_linear(linear)
    layer.plant_inputs(3).plant_outputs(2)
    x = torch.randn(5, 9, requires_grad=True)
    y = layer(x)
    torch.testing.assert_close(y[:, :4], linear(x[:, :6]))  # planted inputs start at zero
    y.square().sum().backward()
    assert layer.frozen_weight.grad is None
    assert layer.in_weight.grad.shape == (4, 3) and layer.out_weight.grad.shape == (2, 9)
    expected = layer(x).detach()
    torch.testing.assert_close(layer.to_linear()(x), expected)
    with pytest.raises(ValueError, match="expects 9 input features"):
        layer(torch.randn(2, 6))


def test_planted_conv_follows_autocast_like_conv2d():
    """Under torch.autocast the op computes in the autocast dtype (as nn.Conv2d does), the
    backend is chosen for that dtype, and the float32 parameters get float32 gradients."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 5, 3, padding=1)
    layer = PlantedConv2d.from_conv(conv).plant_outputs(2).plant_inputs(3)
    with torch.no_grad():
        layer.in_weight.normal_(0, 0.1)
    x = torch.randn(2, 9, 8, 8)
    exact = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = layer(x)
        joined = conv(torch.randn(2, 6, 8, 8))
    assert mixed.dtype == joined.dtype == torch.bfloat16
    torch.testing.assert_close(mixed.float(), exact, atol=0.05, rtol=0.02)
    mixed.float().square().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32
               for p in (layer.in_weight, layer.out_weight, layer.out_bias))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(ValueError, match="backend 'cpu' cannot run on cpu tensors of torch.bfloat16"):
            PlantedConv2d.from_conv(conv, backend="cpu")(x[:, :6])
