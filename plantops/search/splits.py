"""The search's data: the train, validation and test splits on the device, and the input
convention of its networks.

The validation split is held out of the training set (stratified, seeded by --split-seed,
else --seed), as is the --train-subset; the test set is the dataset's own and is only
reported, never used for a choice.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import numpy as np

from plantops import data as datasets
from plantops.data import DeviceData
from plantops.search.config import Config
from plantops.search.networks import InputConvention

# The image sizes of the paper's network families.
FAMILIES = {32: "cifar", 96: "stl"}


@dataclasses.dataclass
class SearchData:
    """The three splits on the device, the convention their images are fed in, the paper's
    network family for their size (None for other sizes), and the classes."""
    train: DeviceData
    val: DeviceData
    test: DeviceData
    arch: str | None
    classes: int
    name: str = ""     # the dataset as the user knows it (a folder's name)
    inputs: InputConvention | None = None

    def __post_init__(self):
        if self.inputs is None:  # data made elsewhere (a benchmark's): its own normalisation
            mean, std = (tuple(t.flatten().tolist()) for t in (self.train.mean, self.train.std))
            self.inputs = InputConvention(mean, std)

    @property
    def image_size(self) -> int:
        return self.train.images.shape[-1]

    @property
    def size_text(self) -> str:
        return f"{self.image_size}x{self.image_size}"


def prepare_data(cfg: Config, device, paper: bool = True) -> SearchData:
    """The splits on ``device``. ``paper``: for the paper's networks (32x32 or 96x96 images,
    normalised by the dataset's channel statistics); otherwise for the user's own networks
    (any size, float [0, 1] images: search.networks)."""
    ds = datasets.load(cfg.dataset, cfg.data, Path(cfg.cache_dir) if cfg.cache_dir else None,
                       cfg.download)
    labels = ds.train_labels
    pool = np.arange(len(labels))
    split_seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
    if cfg.train_subset:
        if cfg.train_subset + cfg.val_size > len(labels):
            raise ValueError(f"--train-subset {cfg.train_subset} + --val-size {cfg.val_size} "
                             f"exceeds the {len(labels)} training images")
    if cfg.train_subset and cfg.train_subset + cfg.val_size < len(labels):  # else: all of them
        _, pool = datasets.stratified_split(labels, cfg.train_subset + cfg.val_size, split_seed)
    train_rel, val_rel = datasets.stratified_split(labels[pool], cfg.val_size, split_seed + 1)
    train_idx, val_idx = pool[train_rel], pool[val_rel]
    if paper and ds.image_size not in FAMILIES:
        raise ValueError(f"images are {ds.image_size}x{ds.image_size}: the paper's networks "
                         "take 32x32 (CIFAR) or 96x96 (STL-10) images; plant a network built "
                         "for them with --student FILE")
    inputs = InputConvention.paper(cfg.dataset, ds.train_images[train_idx]) if paper \
        else InputConvention.unit()
    make = lambda x, y: DeviceData(x, y, device, inputs.mean, inputs.std)
    return SearchData(make(ds.train_images[train_idx], labels[train_idx]),
                      make(ds.train_images[val_idx], labels[val_idx]),
                      make(ds.test_images, ds.test_labels), FAMILIES.get(ds.image_size),
                      len(ds.classes), display_name(cfg, cfg.data), inputs)


def display_name(cfg: Config, data_path: Optional[str]) -> str:
    """The dataset as the user knows it: the official name, or the folder's (archive's) name."""
    if cfg.dataset != "folder" or not data_path:
        return cfg.dataset
    name = Path(data_path).name
    for suffix in (".tar.gz", ".tgz", ".tar", ".zip"):
        if name.endswith(suffix):
            return name[:-len(suffix)]
    return name
