"""The ``cpu`` backend's algorithms for 3x3 stride-1 layers, each forced with
PLANTOPS_CPU_CONV: direct convolution, Winograd (csrc/winograd_cpu.cpp) with its own choice of
tile (F(4x4, 3x3) for forwards and input gradients of 32 channels into 32 filters or more,
F(2x2, 3x3) otherwise) and Winograd F(4x4, 3x3) for every forward and input gradient. Winograd
computes one sample per SIMD lane (16 floats with AVX-512, 8 with AVX2); batches here are large
enough to fill those groups, and some leave the last group partial."""

import pytest
import torch

import plantops
from plantops import planted_conv2d

from helpers import check_backend, check_split, make_inputs, run

pytestmark = pytest.mark.skipif("cpu" not in plantops.backends("cpu"),
                                reason="plantops._C is not built")

ALGORITHMS = ["direct", "winograd", "winograd-f4"]

# (N, I_f, I_p, O_f, O_p, H, W, kernel, stride, padding): 3x3, stride 1, the shapes Winograd takes.
# Their weight gradients reduce over 1 to 40 channels, so every kernel of the Winograd weight
# gradient runs (register tiles of 4x6 for 5 and 12 channels, 4x4 for the other planted
# slices, the stored transforms for the plain layers at the end), with partial tiles.
SHAPES = [
    (17, 5, 3, 7, 2, 9, 11, 3, 1, 1),    # odd map, one full group and one sample more
    (16, 16, 4, 16, 4, 16, 16, 3, 1, 1),  # the search's shape, one group exactly
    (20, 3, 2, 5, 3, 7, 7, 3, 1, 0),     # padding 0: odd output, partial last tile
    (9, 4, 3, 6, 5, 6, 5, 3, 1, 2),      # padding 2: input gradient with padding 0
    (33, 8, 4, 13, 4, 8, 8, 3, 1, 1),    # three groups, 17 output channels
    (16, 2, 1, 3, 1, 1, 1, 3, 1, 1),     # 1x1 map
    # wide enough that the Winograd forward and input gradient run in several bands of tile
    # rows (1 MB of interleaved rows per band: bands of 4, 4 and 2 tile rows here), and the
    # weight gradient of the planted filters in two (8 and 2 tile rows)
    (17, 36, 4, 36, 4, 19, 20, 3, 1, 1),
    # weight gradients in bands with a shorter last one, over channel counts that leave
    # padded channels in the register tiles (39 and 3 of 40 and 4): bands of 4, 4, 4, 4 and
    # 3 tile rows for the planted filters, 5, 5, 5 and 4 for the planted input slices
    (17, 36, 3, 36, 2, 38, 40, 3, 1, 1),
    # a plain layer (no frozen block, the whole weight planted), as the teacher and the
    # initial network train: 16 filters or more by 16 channels or more take the weight
    # gradient that stores the transformed tiles, with padded filters and channels (23 and
    # 19 of 24 and 20, 18 of 18 or 20), in one band and in bands with a shorter last one
    (17, 19, 0, 0, 23, 9, 11, 3, 1, 1),
    (17, 20, 0, 0, 18, 38, 40, 3, 1, 2),
    # 32 channels into 33 filters: under auto, F(4x4, 3x3) for the forward and the input
    # gradient, on maps whose size is not a multiple of its 4x4 tiles
    (16, 32, 0, 0, 33, 6, 10, 3, 1, 1),
]


@pytest.fixture(params=ALGORITHMS)
def algorithm(request, monkeypatch):
    monkeypatch.setenv("PLANTOPS_CPU_CONV", request.param)
    return request.param


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
def test_matches_reference(algorithm, dtype, shape):
    check_backend("cpu", shape, dtype)


@pytest.mark.parametrize("algorithm", ["winograd"], indirect=True)
def test_output_larger_than_the_caches_matches_reference(algorithm):
    """A float32 output over 4 MB (17 x 40 x 40 x 40): the Winograd forward and input
    gradient write it with non-temporal stores, from aligned and unaligned columns."""
    check_backend("cpu", (17, 36, 4, 36, 4, 40, 40, 3, 1, 1), torch.float32)


# The kernels read x_planted where it lies (csrc/planes.h); register tiles and bands of the
# weight gradients then straddle the two tensors. The input gradient and the planted input
# slices' weight gradient run together (winograd::planted_input_grads; also in
# test_matches_reference) for up to 8 planted channels, at every padding (0, 1, 2 here); 9
# take the separate kernels.
SPLIT_SHAPES = SHAPES[:4] + SHAPES[7:] + [(17, 5, 9, 6, 2, 7, 6, 3, 1, 1)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("frozen_needs_grad", [False, True], ids=["planted-grad", "both-grads"])
@pytest.mark.parametrize("shape", SPLIT_SHAPES, ids=[str(s) for s in SPLIT_SHAPES])
def test_split_input_matches_reference(algorithm, shape, frozen_needs_grad, dtype):
    """x_planted: the input gradient of a channel range, and of both parts."""
    check_split("cpu", shape, dtype, frozen_needs_grad)


def test_weight_gradients_do_not_depend_on_the_thread_count(algorithm):
    tensors, conv_args = make_inputs((37, 6, 3, 5, 3, 9, 9, 3, 1, 1), dtype=torch.float32)
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            _, grads = run(planted_conv2d, tensors, conv_args, torch.ones(37, 8, 9, 9),
                           backend="cpu")
            results.append(grads)
    finally:
        torch.set_num_threads(threads)
    for k in ("in_weight", "out_weight", "out_bias"):
        assert torch.equal(results[0][k], results[1][k]), k


def _forward(shape):
    torch.manual_seed(0)  # the same inputs on every call
    tensors, conv_args = make_inputs(shape, dtype=torch.float32)
    return planted_conv2d(**tensors, **conv_args, backend="cpu")


def test_auto_uses_winograd_where_it_applies(monkeypatch):
    """Unset, the choice is Winograd for a 3x3 stride-1 layer whose batch fills half a group,
    and direct otherwise: the two round differently, so the results tell them apart."""
    shapes = [(16, 10, 2, 7, 2, 8, 8, 3, 1, 1),  # Winograd
              (16, 2, 1, 3, 1, 8, 8, 3, 1, 1),   # Winograd, 3 input channels
              (1, 10, 2, 7, 2, 8, 8, 3, 1, 1)]   # batch 1: lanes would idle
    results = {}
    for choice in ("direct", "winograd", "auto"):
        monkeypatch.setenv("PLANTOPS_CPU_CONV", choice)
        results[choice] = [_forward(shape) for shape in shapes]
    for i in range(3):
        assert not torch.equal(results["direct"][i], results["winograd"][i])
    assert torch.equal(results["auto"][0], results["winograd"][0])
    assert torch.equal(results["auto"][1], results["winograd"][1])
    assert torch.equal(results["auto"][2], results["direct"][2])


def test_tile_follows_the_width(monkeypatch):
    """Auto takes F(4x4, 3x3) where both sides of the convolution are 32 wide or more, and the
    forced tiles are honoured: F(2x2, 3x3) and F(4x4, 3x3) round differently."""
    from plantops import _C
    wide, narrow = (16, 30, 2, 30, 2, 8, 8, 3, 1, 1), (16, 30, 1, 30, 2, 8, 8, 3, 1, 1)
    results = {}
    for choice in ("winograd-f2", "winograd-f4", "auto"):
        monkeypatch.setenv("PLANTOPS_CPU_CONV", choice)
        results[choice] = [_forward(wide), _forward(narrow)]
    assert _C.winograd_tile(32, 32) == 4 and _C.winograd_tile(31, 32) == 2
    assert not torch.equal(results["winograd-f2"][0], results["winograd-f4"][0])
    assert torch.equal(results["auto"][0], results["winograd-f4"][0])   # 32 into 32
    assert torch.equal(results["auto"][1], results["winograd-f2"][1])   # 31 into 32


def test_other_layers_ignore_the_choice(monkeypatch):
    """Winograd takes 3x3 stride-1 layers only; a forced choice leaves the others direct."""
    outs = []
    for choice in ALGORITHMS:
        monkeypatch.setenv("PLANTOPS_CPU_CONV", choice)
        outs.append(_forward((16, 4, 2, 5, 2, 9, 9, 3, 2, 1)))  # stride 2
    assert all(torch.equal(outs[0], out) for out in outs[1:])


def test_unknown_choice_is_refused(monkeypatch):
    monkeypatch.setenv("PLANTOPS_CPU_CONV", "fft")
    with pytest.raises(ValueError, match="PLANTOPS_CPU_CONV must be auto, direct, winograd, "
                                         "winograd-f2 or winograd-f4, got 'fft'"):
        _forward((16, 4, 2, 5, 2, 8, 8, 3, 1, 1))
