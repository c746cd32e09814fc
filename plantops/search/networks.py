"""The search's networks as the user gives them: --student and --teacher files, the input
convention, and the checks made before anything trains.

The input convention: a network of the user's own takes float images in [0, 1]
(``uint8 / 255``), ``[N, 3, H, W]``, with any normalisation inside it, as ``final.pt`` takes
them. A search whose student is the user's feeds the networks those images (augmented crops
pad with black, as torchvision's ``RandomCrop(padding=4)``); a search of the paper's
networks feeds them images normalised by the dataset's channel statistics, as before. A
teacher that expects the other convention is wrapped in an ``InputAdapter``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from plantops.chain import Chain, ChainError


class NetworkFileError(ValueError):
    """A --student or --teacher file that does not give a network (exit code 2)."""


class InputAdapter(nn.Module):
    """``module(x * scale + shift)`` per channel: a network fed images of another convention
    (normalised images to a [0, 1] network: scale std, shift mean; [0, 1] images to a
    normalised one: scale 1 / std, shift -mean / std)."""

    def __init__(self, module: nn.Module, scale, shift, num_classes: int):
        super().__init__()
        self.module = module
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("shift", torch.as_tensor(shift, dtype=torch.float32).view(1, -1, 1, 1))
        self.num_classes = num_classes

    def forward(self, x):
        return self.module(x * self.scale + self.shift)

    @torch.no_grad()
    def frozen_forward(self, x):
        inner = getattr(self.module, "frozen_forward", self.module)
        return inner(x * self.scale + self.shift)


def load_module(spec: str, what: str, seed: int = 0) -> tuple[nn.Module, str]:
    """(the module, its name) of ``spec``: ``FILE.py:FUNCTION`` (called with the torch seed set
    to ``seed``, so its initial weights are the same on every run) or a file written by
    ``torch.save(model)``. ``what`` (--student, --teacher) names it in errors."""
    path_text, _, function = spec.rpartition(":") if ".py:" in spec else (spec, "", "")
    path = Path(path_text)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {spec}: no such file {path}")
    if function:
        source = importlib.util.spec_from_file_location(f"plantops_user_{path.stem}", path)
        module_code = importlib.util.module_from_spec(source)
        sys.modules[source.name] = module_code  # so that torch.save can pickle its classes
        try:
            source.loader.exec_module(module_code)
        except Exception as err:  # the user's file: any error it raises is its own
            raise NetworkFileError(f"{what} {spec}: {path} fails to import "
                                   f"({type(err).__name__}: {str(err).splitlines()[0][:150]})"
                                   ) from None
        make = getattr(module_code, function, None)
        if not callable(make):
            raise NetworkFileError(f"{what} {spec}: {path} has no function {function!r}")
        torch.manual_seed(seed)
        try:
            net = make()
        except Exception as err:
            raise NetworkFileError(f"{what} {spec}: {function}() fails "
                                   f"({type(err).__name__}: {str(err).splitlines()[0][:150]})"
                                   ) from None
        name = function
    else:
        try:
            net = torch.load(path, map_location="cpu", weights_only=False)
        except (ModuleNotFoundError, AttributeError) as err:  # the pickle names its classes
            raise NetworkFileError(f"{what} {spec} does not load ({type(err).__name__}: "
                                   f"{str(err).splitlines()[0][:150]}): the module that defines "
                                   "its classes must import; run from the folder it imports "
                                   "from, or add that folder to PYTHONPATH") from None
        except Exception as err:
            raise NetworkFileError(f"{what} {spec} does not load ({type(err).__name__}: "
                                   f"{str(err).splitlines()[0][:150]}); pass a file written by "
                                   "torch.save(model), or FILE.py:FUNCTION") from None
        name = path.stem
    if not isinstance(net, nn.Module):
        raise NetworkFileError(f"{what} {spec} gives a {type(net).__name__}, not an nn.Module")
    return net, name


def student_chain(module: nn.Module, name: str) -> Chain:
    """The user's student as a chain (ChainError, before any training, if it is not one)."""
    return Chain.of(module, name)


def check_teacher(teacher: nn.Module, name: str, sample: torch.Tensor, classes: int):
    """ValueError, in one line, when the teacher does not give ``classes`` logits for images
    like ``sample``."""
    size = f"{sample.shape[-2]}x{sample.shape[-1]}"
    try:
        with torch.no_grad():
            out = getattr(teacher, "frozen_forward", teacher)(sample)
    except Exception as err:  # the user's module: any error it raises is its own
        raise ValueError(f"the teacher {name} fails on the data's {size} images "
                         f"({type(err).__name__}: {str(err).splitlines()[0][:150]}): pass a "
                         "teacher built for this image size") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (sample.shape[0], classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"the teacher {name} outputs {shape} for {sample.shape[0]} images of "
                         f"{size}; expected logits [{sample.shape[0]}, {classes}] (the data has "
                         f"{classes} classes): pass a teacher trained on this dataset")


def check_student(net: Chain, channels: int, size: int, classes: int):
    """ChainError when the student does not run on the data's images or gives other classes."""
    from plantops.chain import spatial_check
    got = spatial_check(net, channels, size)
    if got != classes:
        raise ChainError(f"{net.name} outputs {got} logits; the data has {classes} classes: "
                         f"make its last layer {classes} wide")


def display_name(cfg, data_path: Optional[str]) -> str:
    """The dataset as the user knows it: the official name, or the folder's (archive's) name."""
    if cfg.dataset != "folder" or not data_path:
        return cfg.dataset
    name = Path(data_path).name
    for suffix in (".tar.gz", ".tgz", ".tar", ".zip"):
        if name.endswith(suffix):
            return name[:-len(suffix)]
    return name
