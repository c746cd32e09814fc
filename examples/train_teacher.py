"""Train a teacher of your own for a search, as a user would in plain PyTorch: a small ResNet
(examples/resnet.py) on the search's own training split, saved with ``torch.save(model)``.

    python examples/train_teacher.py --data runs/cifar64 --epochs 10 --out runs/resnet64.pt
    python -m plantops.search --dataset folder --data runs/cifar64 \
        --student examples/vgg_bn.py:student --teacher runs/resnet64.pt --out runs/vgg64

The split is the search's (the same --train-subset, --val-size and --seed), so the
validation images that choose the candidates are ones the teacher never saw. Run both
commands from the repository's root: the saved module names its class ``examples.resnet``.
"""

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `examples.resnet` imports

from examples.resnet import resnet  # noqa: E402
from plantops.search import Config  # noqa: E402
from plantops.search import prepare_data  # noqa: E402


def accuracy(model, data, batch_size=500):
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in data.batches(batch_size):
            correct += (model(x).argmax(1) == y).sum().item()
    return correct / len(data)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="image folder or archive (train/<class>/*, test/<class>/*)")
    p.add_argument("--out", required=True, help="where to save the trained module")
    p.add_argument("--width", type=int, default=32, help="the ResNet's first stage width (default 32)")
    p.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    p.add_argument("--lr", type=float, default=0.1, help="peak SGD learning rate (default 0.1)")
    p.add_argument("--batch-size", type=int, default=128, help="(default 128)")
    p.add_argument("--train-subset", type=int, default=8000, help="as the search's (default 8000)")
    p.add_argument("--val-size", type=int, default=2000, help="as the search's (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="as the search's (default 0)")
    args = p.parse_args(argv)

    cfg = Config(dataset="folder", data=args.data, train_subset=args.train_subset,
                 val_size=args.val_size, seed=args.seed)
    data = prepare_data(cfg, "cpu", paper=False)   # float [0, 1] images: the input convention
    torch.manual_seed(args.seed)
    model = resnet(args.width, data.classes, data.image_size)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    steps = args.epochs * -(-len(data.train) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=steps, pct_start=0.25)
    gen = torch.Generator().manual_seed(args.seed)
    print(f"training ResNet(width {args.width}) on {len(data.train)} {data.image_size}x"
          f"{data.image_size} images of {data.name}, {args.epochs} epochs", flush=True)
    start = time.time()
    for epoch in range(1, args.epochs + 1):
        model.train()
        total = 0.0
        for x, y in data.train.batches(args.batch_size, gen, augment=True):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(y)
        print(f"epoch {epoch:>3}/{args.epochs}  train loss {total / len(data.train):.4f}  "
              f"val acc {accuracy(model, data.val) * 100:6.2f}%  {time.time() - start:6.1f}s",
              flush=True)
    print(f"test acc {accuracy(model, data.test) * 100:.2f}%", flush=True)
    model.eval()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(model, args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
