"""Bad input to planted_conv2d gets an error naming the argument, what it got, what was expected."""

import pytest
import torch

from plantops import planted_conv2d


def good():
    return dict(x=torch.randn(2, 5, 6, 6), frozen_weight=torch.randn(4, 3, 3, 3),
                frozen_bias=torch.randn(4), out_weight=torch.randn(2, 5, 3, 3),
                out_bias=torch.randn(2), in_weight=torch.randn(4, 2, 3, 3))


def test_good_input_runs():
    assert planted_conv2d(**good(), padding=1).shape == (2, 6, 6, 6)


@pytest.mark.parametrize("change, error, words", [
    (dict(x=torch.randn(2, 4, 6, 6)), ValueError, ["x has 4 channels", "3 + 2 = 5"]),
    (dict(in_weight=torch.randn(4, 2, 5, 5)), ValueError, ["in_weight", "[4, I_p, 3, 3]"]),
    (dict(out_weight=torch.randn(2, 4, 3, 3)), ValueError, ["out_weight", "[O_p, 5, 3, 3]"]),
    (dict(frozen_bias=torch.randn(3)), ValueError, ["frozen_bias", "[4]"]),
    (dict(out_bias=torch.randn(3)), ValueError, ["out_bias", "[2]"]),
    (dict(out_weight=None), ValueError, ["out_bias was given without out_weight"]),
    (dict(x=torch.randn(2, 5, 6)), ValueError, ["x must have 4 dimensions", "(2, 5, 6)"]),
    (dict(x=torch.randn(2, 5, 6, 6, dtype=torch.float64)), TypeError, ["frozen_weight", "float32", "float64"]),
    (dict(x=torch.ones(2, 5, 6, 6, dtype=torch.int64)), TypeError, ["x must be a floating-point"]),
    (dict(frozen_weight=[[1.0]]), TypeError, ["frozen_weight must be a torch.Tensor", "list"]),
    (dict(x=None), TypeError, ["x is required"]),
    (dict(x=torch.randn(2, 5, 6, 6, device="meta")), ValueError, ["is on cpu but x is on meta"]),
])
def test_bad_input(change, error, words):
    args = {**good(), **change}
    with pytest.raises(error) as info:
        planted_conv2d(**args, padding=1)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(stride=0), ValueError, ["stride must be >= 1"]),
    (dict(padding=-1), ValueError, ["padding must be >= 0"]),
    (dict(stride=(1, 2, 3)), TypeError, ["stride must be an int or a pair"]),
    (dict(padding=1.5), TypeError, ["padding must be an int or a pair"]),
    (dict(backend="fast"), ValueError, ["unknown backend 'fast'", "auto", "torch"]),
    (dict(backend=3), TypeError, ["backend must be a string"]),
])
def test_bad_options(kwargs, error, words):
    with pytest.raises(error) as info:
        planted_conv2d(**good(), **{"padding": 1, **kwargs})
    for word in words:
        assert word in str(info.value), (word, str(info.value))


@pytest.mark.parametrize("x, x_planted, error, words", [
    (torch.randn(2, 5, 6, 6), torch.randn(2, 2, 6, 6), ValueError,
     ["x holds the I_f = 3 frozen", "I_p = 2", "(2, 5, 6, 6)"]),
    (torch.randn(2, 3, 6, 6), torch.randn(2, 1, 6, 6), ValueError,
     ["x_planted the I_p = 2", "(2, 1, 6, 6)"]),
    (torch.randn(2, 3, 6, 6), torch.randn(3, 2, 6, 6), ValueError,
     ["x_planted must match x in batch and map size", "(3, 2, 6, 6)"]),
    (torch.randn(2, 3, 6, 6), torch.randn(2, 2, 6, 6, dtype=torch.float64), TypeError,
     ["x_planted has dtype torch.float64"]),
    (torch.randn(2, 3, 6, 6), torch.randn(2, 2, 6), ValueError,
     ["x_planted must have 4 dimensions"]),
])
def test_bad_split_input(x, x_planted, error, words):
    args = {**good(), "x": x}
    with pytest.raises(error) as info:
        planted_conv2d(**args, padding=1, x_planted=x_planted)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_kernel_larger_than_input():
    args = good()
    args["x"] = torch.randn(2, 5, 2, 2)
    with pytest.raises(ValueError, match="kernel 3x3 is larger than the padded input 2x2"):
        planted_conv2d(**args)


def test_backend_that_cannot_run_says_why_and_what_can():
    with pytest.raises(ValueError) as info:
        planted_conv2d(**good(), padding=1, backend="cuda")
    message = str(info.value)
    assert "backend 'cuda' cannot run on cpu tensors" in message
    assert "Available here for this input" in message and "torch" in message
