"""Write a copy of an image dataset at another size, e.g. CIFAR-10 at 64x64 to try planting a
network built for 64x64 images:

    python examples/resize_images.py ../shared/data/cifar10-jpeg.tar.gz runs/cifar64 \
        --size 64 --train-per-class 1000 --test-per-class 200

Reads a folder or a .tar/.tar.gz of train/<class>/* and test/<class>/*; writes the same
layout of PNG files (bicubic resampling), the first N images of each class in name order.
"""

import argparse
import io
import tarfile
from collections import defaultdict
from pathlib import Path

from PIL import Image

SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def members(source: Path):
    """(split, class, name, read) of every image under train/ and test/, in name order."""
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in SUFFIXES)
        for p in files:
            parts = p.relative_to(source).parts
            if len(parts) >= 3 and parts[-3] in ("train", "test"):
                yield parts[-3], parts[-2], p.stem, p.read_bytes
        return
    with tarfile.open(source) as tar:   # read in the archive's order: a .tar.gz cannot seek
        items = [(m.name, tar.extractfile(m).read()) for m in tar
                 if m.isfile() and Path(m.name).suffix.lower() in SUFFIXES]
    for name, data in sorted(items):
        parts = Path(name).parts
        if len(parts) >= 3 and parts[-3] in ("train", "test"):
            yield parts[-3], parts[-2], Path(name).stem, (lambda data=data: data)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", type=Path, help="folder or archive of train/<class>/*, test/<class>/*")
    p.add_argument("target", type=Path, help="folder to write")
    p.add_argument("--size", type=int, default=64, help="side of the square images (default 64)")
    p.add_argument("--train-per-class", type=int, default=0, help="0 = all (default)")
    p.add_argument("--test-per-class", type=int, default=0, help="0 = all (default)")
    args = p.parse_args(argv)
    if not args.source.exists():
        p.error(f"{args.source} does not exist")
    limit = {"train": args.train_per_class, "test": args.test_per_class}
    count = defaultdict(int)
    for split, cls, name, read in members(args.source):
        if limit[split] and count[split, cls] >= limit[split]:
            continue
        with Image.open(io.BytesIO(read())) as im:
            im = im.convert("RGB").resize((args.size, args.size), Image.BICUBIC)
        folder = args.target / split / cls
        folder.mkdir(parents=True, exist_ok=True)
        im.save(folder / f"{name}.png")
        count[split, cls] += 1
    for split in ("train", "test"):
        n = sum(v for (s, _), v in count.items() if s == split)
        print(f"{split}: {n} images in {len({c for s, c in count if s == split})} classes")
    if not count:
        p.error(f"{args.source} has no images under train/<class>/ or test/<class>/")


if __name__ == "__main__":
    main()
