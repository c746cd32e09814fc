"""The search's networks as the user gives them: --student and --teacher files, the input
convention, and the checks made before anything trains.

The input convention (``InputConvention``, decided once per search, in ``splits.prepare_data``):
a network of the user's own takes float images in [0, 1] (``uint8 / 255``), ``[N, 3, H, W]``,
with any normalisation inside it, as ``final.pt`` takes them. A search whose student is the
user's feeds the networks those images (augmented crops pad with black, as torchvision's
``RandomCrop(padding=4)``); a search of the paper's networks feeds them images normalised by
the dataset's channel statistics, and exports its network with that normalisation as its
first layer. A teacher that expects another convention is wrapped in an ``InputAdapter``.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from plantops import models
from plantops.chain import Chain, ChainError
from plantops.graph import GraphNet
from plantops.inference import for_inference
from plantops.models import normalizing_conv
from plantops.planting import export
from plantops.search.checkpoints import is_network_checkpoint

# Per-channel mean and std of the official datasets' training images.
NORMALIZATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
}


class NetworkFileError(ValueError):
    """A --student or --teacher file that does not give a network (exit code 2)."""


class InputAdapter(nn.Module):
    """``module(x * scale + shift)`` per channel: a network fed images of another convention
    (normalised images to a [0, 1] network: scale std, shift mean; [0, 1] images to a
    normalised one: scale 1 / std, shift -mean / std)."""

    def __init__(self, module: nn.Module, scale, shift):
        super().__init__()
        self.module = module
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("shift", torch.as_tensor(shift, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return self.module(x * self.scale + self.shift)

    @torch.no_grad()
    def frozen_forward(self, x):
        inner = getattr(self.module, "frozen_forward", self.module)
        return inner(x * self.scale + self.shift)


@dataclasses.dataclass(frozen=True)
class InputConvention:
    """The images a search feeds its networks: ``(x / 255 - mean) / std`` per channel. The
    paper's networks take images normalised by the dataset's statistics (``paper``); a
    user's take float [0, 1] images (``unit``: mean 0, std 1)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def unit(cls, channels: int = 3) -> "InputConvention":
        return cls((0.0,) * channels, (1.0,) * channels)

    @classmethod
    def paper(cls, dataset: str, train_images: np.ndarray) -> "InputConvention":
        """Images normalised by the official dataset's statistics, or by those of
        ``train_images`` (uint8, ``[N, H, W, C]``) for any other."""
        if dataset in NORMALIZATION:
            return cls(*NORMALIZATION[dataset])
        x = np.ascontiguousarray(train_images).reshape(-1, train_images.shape[-1])
        x = x.astype(np.float64) / 255.0
        return cls(tuple(x.mean(0)), tuple(x.std(0)))

    @classmethod
    def of_meta(cls, meta: dict) -> "InputConvention":
        return cls(tuple(meta["mean"]), tuple(meta["std"]))

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """mean and std as the device data holds them (float32)."""
        return (torch.tensor(self.mean, dtype=torch.float32),
                torch.tensor(self.std, dtype=torch.float32))

    def meta(self) -> dict:
        """What a network's checkpoint records of the images it was trained on."""
        mean, std = self.tensors()
        return dict(mean=mean.tolist(), std=std.tolist())

    def feed(self, module: nn.Module, takes: "InputConvention") -> nn.Module:
        """``module``, which takes images of the convention ``takes``, fed this convention's
        images (an InputAdapter where the two differ)."""
        mine_mean, mine_std = self.tensors()
        mean, std = takes.tensors()
        if torch.equal(mine_mean, mean) and torch.equal(mine_std, std):
            return module
        device = next(iter(module.parameters()), mine_mean).device
        return InputAdapter(module, mine_std / std, (mine_mean - mean) / std).to(device)

    def export(self, net: Chain) -> nn.Sequential:
        """``net`` as plain torch layers that take float [0, 1] images: the user's own
        nn.Sequential, grown (it takes them already), or, for images normalised here, the
        network behind a first layer that normalises (a 1x1 convolution)."""
        net = net.cpu()
        if self == InputConvention.unit(len(self.mean)):
            return export(net)
        return nn.Sequential(normalizing_conv(*self.tensors()), *export(net))


def _importable_elsewhere(name: str, path: Path) -> bool:
    """Whether ``import name`` finds a module of another file (the standard library's json,
    say), which registering the user's file under that name would hide."""
    try:
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return False
    return found is not None and (found.origin is None
                                  or Path(found.origin).resolve() != path.resolve())


def _import_file(path: Path, spec: str, what: str):
    """The Python file ``path`` imported as a module named by its stem (``resnet`` for
    resnet.py), so that the networks saved from it (torch.save pickles classes by module
    name) load wherever that file imports, without plantops; under another name where the
    stem is taken by a module of another file."""
    name = path.stem
    taken = sys.modules.get(name)
    if taken is not None and Path(getattr(taken, "__file__", "") or "").resolve() \
            == path.resolve():
        return taken  # the same file, for the student and the teacher, say
    if taken is not None or not name.isidentifier() or _importable_elsewhere(name, path):
        name = "plantops_user_" + re.sub(r"\W", "_", path.stem)
    source = importlib.util.spec_from_file_location(name, path)
    module_code = importlib.util.module_from_spec(source)
    sys.modules[name] = module_code
    try:
        source.loader.exec_module(module_code)
    except Exception as err:  # the user's file: any error it raises is its own
        del sys.modules[name]
        raise NetworkFileError(f"{what} {spec}: {path} fails to import "
                               f"({type(err).__name__}: {str(err).splitlines()[0][:150]})"
                               ) from None
    return module_code


def load_module(spec: str, what: str, seed: int = 0) -> tuple[nn.Module, str]:
    """(the module, its name) of ``spec``: ``FILE.py:FUNCTION`` (called with the torch seed set
    to ``seed``, so its initial weights are the same on every run) or a file written by
    ``torch.save(model)``. ``what`` (--student, --teacher) names it in errors."""
    path_text, _, function = spec.rpartition(":") if ".py:" in spec else (spec, "", "")
    path = Path(path_text)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {spec}: no such file {path}")
    if function:
        module_code = _import_file(path, spec, what)
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


def check_logits(forward, who: str, sample: torch.Tensor, classes: int, error=ValueError,
                 other_size: str = "pass a network built for this image size",
                 other_classes: str = "pass a network of the data's classes"):
    """``error``, in one line, when ``forward`` (a network as it is evaluated) fails on
    images like ``sample`` or does not give ``classes`` logits for them; ``who`` names the
    network, ``other_size`` and ``other_classes`` say what to do."""
    size = f"{sample.shape[-2]}x{sample.shape[-1]}"
    try:
        with torch.no_grad():
            out = forward(sample)
    except Exception as err:  # the user's module: any error it raises is its own
        raise error(f"{who} fails on the data's {size} images ({type(err).__name__}: "
                    f"{str(err).splitlines()[0][:150]}): {other_size}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (sample.shape[0], classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise error(f"{who} outputs {shape} for {sample.shape[0]} images of {size}; expected "
                    f"logits [{sample.shape[0]}, {classes}] (the data has {classes} classes): "
                    f"{other_classes}")


def check_teacher_output(teacher: nn.Module, name: str, sample: torch.Tensor, classes: int):
    """ValueError, in one line, when the teacher does not give ``classes`` logits for images
    like ``sample``."""
    check_logits(getattr(teacher, "frozen_forward", teacher), f"the teacher {name}", sample,
                 classes, ValueError, "pass a teacher built for this image size",
                 "pass a teacher trained on this dataset")


def check_student(net: Chain, channels: int, size: int, classes: int):
    """ChainError naming the module where ``net`` fails on [2, channels, size, size] images,
    or saying that it gives another number of classes than ``classes``."""
    x = torch.zeros(2, channels, size, size, dtype=next(net.parameters()).dtype,
                    device=next(net.parameters()).device)
    was = net.training
    net.eval()
    try:
        with torch.no_grad():
            h = x
            for path, m in zip(net.paths, net.body):
                try:
                    h = m(h)
                except (RuntimeError, ValueError) as err:
                    raise ChainError(f"{net.name} does not run on {size}x{size} images with "
                                     f"{channels} channels: module {path!r} "
                                     f"({type(m).__name__}) fails on a {tuple(h.shape)} input "
                                     f"({str(err).splitlines()[0][:120]})") from None
    finally:
        net.train(was)
    if h.dim() != 2:
        raise ChainError(f"{net.name} outputs a {tuple(h.shape)} tensor on {size}x{size} "
                         "images; expected logits [N, classes] (end it with a flatten and a "
                         "linear layer, or a pool and a flatten)")
    if h.shape[1] != classes:
        raise ChainError(f"{net.name} outputs {h.shape[1]} logits; the data has {classes} "
                         f"classes: make its last layer {classes} wide")


def user_student(cfg, module: nn.Module | None) -> tuple[nn.Module | None, str]:
    """(the user's student, its name) from ``module`` or --student: a Chain where it is an
    nn.Sequential of the layers a chain plants, else the module as it is (``plantable``
    makes it a GraphNet once the images are known); (None, "Student[k]") for the paper's.
    ChainError, before any training, for an nn.Sequential of plain torch layers that cannot
    be planted."""
    if module is None and cfg.student:
        module, name = load_module(cfg.student, "--student", cfg.seed)
    elif module is not None:
        name = getattr(module, "name", None) if isinstance(module, (Chain, GraphNet)) else None
        name = name or type(module).__name__
    else:
        return None, f"Student[{cfg.init_width}]"
    if name == "Sequential":
        name = "student"
    if isinstance(module, GraphNet):
        return copy.deepcopy(module), name
    try:
        return Chain.of(module, name), name
    except ChainError:
        if all(type(m).__module__.startswith("torch.nn") for m in module.modules()):
            raise  # a chain's layers, wrongly put together: the chain's message says how
        return module, name  # a network of any shape: planted by its width groups


def plantable(net: nn.Module, name: str, channels: int, size: int, classes: int,
              cfg) -> Chain | GraphNet:
    """The user's student as the search plants it: a Chain (checked on the images), or a
    GraphNet of its width groups. ValueError (ChainError, WidthGroupError) in one line where
    it does not run on ``[2, channels, size, size]`` images, gives another number of logits
    than ``classes``, or has nothing the search can grow (--plant-fc1: its linear layers'
    widths too)."""
    include_linear = cfg.plant_fc1
    if isinstance(net, Chain):
        check_student(net, channels, size, classes)
        points = net.plantable_points(include_linear)
    else:
        if not isinstance(net, GraphNet):
            net = GraphNet.of(net, name, (channels, size, size))
        weight = next(net.parameters())
        was = net.training
        try:
            check_logits(net.eval(), name, torch.zeros(2, channels, size, size,
                                                       dtype=weight.dtype, device=weight.device),
                         classes, ChainError, "pass a network built for this image size",
                         f"make its last layer {classes} wide")
        finally:
            net.train(was)
        if cfg.plant_init == "steepest":
            raise ValueError(f"--plant-init steepest plants chains only; {name} is planted by "
                             "width groups: use --plant-init preserve, small or random")
        points = net.plantable_points(include_linear)
        if not points:
            why = "; ".join(f"{g.name}: {g.why_not}" for g in net.groups if not g.plantable)
            linear = "" if include_linear or not net.points else (
                " (pass --plant-fc1 to plant the widths linear layers make)")
            raise ChainError(f"{name} has no width the search can grow{linear}: "
                             f"{why or 'no conv makes channels that another layer reads'}")
        return net
    if not points:
        raise ChainError(f"{name} has no conv layer before its classifier: pass --plant-fc1 "
                         "to plant its linear layers")
    return net


def user_teacher(cfg, module: nn.Module | None) -> tuple[nn.Module, str] | None:
    """(a teacher module of the user's, its name) from ``module`` or --teacher; None for the
    search's own Teacher[k] (trained, or a teacher.pt of an earlier search)."""
    spec = cfg.teacher
    if module is not None:
        return module, getattr(module, "name", None) or type(module).__name__
    if not spec:
        return None
    path = Path(spec)
    if ".py:" not in spec:
        if not path.is_file():
            raise FileNotFoundError(f"--teacher {spec} does not exist: pass a teacher.pt "
                                    "of an earlier search, a saved nn.Module or "
                                    "FILE.py:FUNCTION")
        if is_network_checkpoint(path):
            return None  # a teacher.pt of plantops
    return load_module(spec, "--teacher", cfg.seed)


def ready_teacher(module: nn.Module, name: str, data, place) -> nn.Module:
    """The user's teacher as the search runs it: a frozen copy whose convolutions run through
    the planted kernels (plantops.inference; the user's module stays theirs), placed by
    ``place`` (on the device, in its layout), fed the search's images; ValueError, in one
    line, if it does not give the data's logits."""
    # The user's teacher takes [0, 1] images. The adapter goes inside what is converted, so
    # that its conversion and the module's own normalisation fold into one pass over each
    # chunk of images (plantops.inference).
    adapted = data.inputs.feed(module, InputConvention.unit(len(data.inputs.mean)))
    frozen = for_inference(adapted)
    if frozen.note is not None:
        print(f"teacher {name} runs as written: {frozen.note}")
    frozen = place(frozen)
    check_teacher_output(frozen, name, data.val.normalize(data.val.images[:2]), data.classes)
    return frozen


def check_trained_teacher(net: nn.Module, path: Path, data):
    """ValueError when a teacher.pt of an earlier search is of another dataset than
    ``data``: other classes, or another family of the paper's networks."""
    family = models.family(net)
    if net.num_classes != data.classes or (data.arch is not None and family != data.arch):
        raise ValueError(f"the teacher {path} is a {family or 'user'} network with "
                         f"{net.num_classes} classes, but the data is "
                         f"{data.arch or data.size_text} with {data.classes} classes: pass a "
                         "teacher trained on this dataset")


def trained_teacher_inputs(meta: dict, dataset: str, data) -> InputConvention:
    """The images a teacher.pt of an earlier search takes: those it records, or, without a
    record (a search before records were kept), those the paper's networks are fed."""
    if meta.get("inputs") is not None:
        return InputConvention.of_meta(meta["inputs"])
    images = data.train.images.permute(0, 2, 3, 1).cpu().numpy()
    return InputConvention.paper(dataset, images)
