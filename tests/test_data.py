"""Dataset loaders on small fixtures built here, in each accepted format."""

import pickle
import tarfile

import numpy as np
import pytest
import torch

from plantops import data

from helpers import CLASSES, write_image_folder


def tar_folder(folder, path, top="dataset"):
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname=top)
    return path


def test_image_folder_and_its_tarball_agree(tmp_path):
    folder = write_image_folder(tmp_path / "imgs")
    a = data.load("folder", folder, cache_dir=tmp_path / "cache")
    b = data.load("folder", tar_folder(folder, tmp_path / "imgs.tar.gz"), cache_dir=tmp_path / "c2")
    assert a.train_images.shape == (18, 32, 32, 3) and a.test_images.shape == (6, 32, 32, 3)
    assert a.classes == CLASSES
    np.testing.assert_array_equal(a.train_images, b.train_images)
    np.testing.assert_array_equal(a.train_labels, b.train_labels)
    assert set(a.train_labels.tolist()) == {0, 1, 2}
    # labels follow the class folder
    assert all(a.train_images[i, 0, 0, 0] == a.train_labels[i] * 100 for i in range(18))


def test_image_folder_is_cached(tmp_path):
    folder = write_image_folder(tmp_path / "imgs")
    data.load("folder", folder, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("folder-*.npz"))) == 1
    again = data.load("folder", folder, cache_dir=tmp_path / "cache")
    assert again.train_images.shape == (18, 32, 32, 3)


def test_corrupt_image_names_the_file(tmp_path):
    folder = write_image_folder(tmp_path / "imgs")
    (folder / "train" / "dog" / "0001.png").write_bytes(b"not an image")
    with pytest.raises(data.DataError, match=r"dog/0001.png"):
        data.load("folder", folder, cache_dir=tmp_path / "cache")


def test_truncated_tarball_is_an_error_naming_it(tmp_path):
    archive = tar_folder(write_image_folder(tmp_path / "imgs"), tmp_path / "imgs.tar.gz")
    raw = archive.read_bytes()
    archive.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(data.DataError, match="imgs.tar.gz"):
        data.load("folder", archive, cache_dir=tmp_path / "cache")


def write_cifar10(root, n_per_batch=4):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 b"labels": list(rng.integers(0, 10, n_per_batch))}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(
        pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))
    return folder


def test_cifar10_python_format_folder_and_archive(tmp_path):
    folder = write_cifar10(tmp_path / "src")
    ds = data.load("cifar10", tmp_path / "src", download=False)
    assert ds.train_images.shape == (20, 32, 32, 3) and ds.test_images.shape == (4, 32, 32, 3)
    raw = pickle.loads((folder / "data_batch_1").read_bytes())[b"data"][0]
    np.testing.assert_array_equal(ds.train_images[0, :, :, 0].ravel(), raw[:1024])
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    ds2 = data.load("cifar10", archive, download=False)
    np.testing.assert_array_equal(ds.train_images, ds2.train_images)


def test_cifar_truncated_batch_names_the_file(tmp_path):
    folder = write_cifar10(tmp_path / "src")
    raw = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(raw[:100])
    with pytest.raises(data.DataError, match="data_batch_3"):
        data.load("cifar10", folder, download=False)


def test_stl10_binary_format(tmp_path):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)  # HWC
    stored = images.transpose(0, 3, 2, 1).tobytes()                  # STL's [N, 3, W, H]
    for split in ("train", "test"):
        (folder / f"{split}_X.bin").write_bytes(stored)
        (folder / f"{split}_y.bin").write_bytes(bytes([1, 2, 10]))
    (folder / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(10)))
    ds = data.load("stl10", folder, download=False)
    np.testing.assert_array_equal(ds.train_images, images)
    assert ds.train_labels.tolist() == [0, 1, 9]
    (folder / "test_X.bin").write_bytes(stored[:-7])
    with pytest.raises(data.DataError, match="test_X.bin is truncated"):
        data.load("stl10", folder, download=False)


def test_missing_dataset_says_where_it_looked_and_what_to_do(tmp_path):
    with pytest.raises(data.DataError) as info:
        data.load("cifar100", tmp_path / "nowhere", cache_dir=tmp_path / "cache", download=False)
    message = str(info.value)
    assert "looked in" in message and str(tmp_path / "nowhere") in message
    assert "cifar-100-python" in message and "--data" in message


def test_stratified_split_is_seeded_and_proportional():
    labels = np.repeat(np.arange(4), [40, 30, 20, 10])
    train, val = data.stratified_split(labels, 10, seed=3)
    assert len(val) == 10 and len(train) == 90 and not set(train) & set(val)
    assert np.bincount(labels[val]).tolist() == [4, 3, 2, 1]
    assert np.array_equal(val, data.stratified_split(labels, 10, seed=3)[1])
    assert not np.array_equal(val, data.stratified_split(labels, 10, seed=4)[1])


def test_augmentation_is_a_crop_of_the_padded_image_or_its_mirror():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.uint8).view(2, 3, 8, 8)
    out = data.random_crop_flip(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        views = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], v) or torch.equal(out[i], v.flip(-1)) for v in views)


@pytest.mark.parametrize("pad, flips", [(0, "some"), (1, "none"), (3, "all"), (2, "some")])
def test_crop_flip_takes_each_window_of_the_images_it_indexes(pad, flips):
    """crop_flip's CPU path (an index into the crop windows' strided view) against slicing
    each view by hand: non-square images, repeated indices, no, some or every view mirrored,
    from padded images and from unpadded ones."""
    g = torch.Generator().manual_seed(pad)
    x = torch.randn(5, 3, 6, 9, generator=g)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    index = torch.tensor([4, 0, 4, 2, 1, 3, 0])
    dy = torch.randint(0, 2 * pad + 1, (7,), generator=g).to(torch.uint8)
    dx = torch.randint(0, 2 * pad + 1, (7,), generator=g).to(torch.uint8)
    flip = {"none": torch.zeros(7, dtype=torch.bool), "all": torch.ones(7, dtype=torch.bool),
            "some": torch.tensor([1, 0, 0, 1, 1, 0, 1], dtype=torch.bool)}[flips]
    want = torch.stack([padded[i, :, a:a + 6, b:b + 9] for i, a, b in
                        zip(index.tolist(), dy.tolist(), dx.tolist())])
    want = torch.where(flip[:, None, None, None], want.flip(-1), want)
    got = data.crop_flip(padded, pad, dy, dx, flip, padded=True, index=index)
    assert got.is_contiguous() and torch.equal(got, want)
    assert torch.equal(data.crop_flip(x[index], pad, dy, dx, flip), want)


def test_the_decoded_cache_is_keyed_by_content_not_path(tmp_path):
    folder = write_image_folder(tmp_path / "imgs")
    archive = tar_folder(folder, tmp_path / "a.tar.gz")
    (tmp_path / "elsewhere").mkdir()
    copy = tmp_path / "elsewhere" / "b.tar.gz"
    copy.write_bytes(archive.read_bytes())
    cache = tmp_path / "cache"
    data.load("folder", archive, cache_dir=cache)
    data.load("folder", copy, cache_dir=cache)
    assert len(list(cache.glob("folder-*.npz"))) == 1
    (folder / "train" / "cat" / "0000.png").unlink()  # other content: another entry
    data.load("folder", tar_folder(folder, tmp_path / "c.tar.gz"), cache_dir=cache)
    assert len(list(cache.glob("folder-*.npz"))) == 2


def test_an_image_folder_archive_read_as_cifar_says_so(tmp_path):
    archive = tar_folder(write_image_folder(tmp_path / "imgs"), tmp_path / "imgs.tar.gz")
    with pytest.raises(data.DataError, match="looks like an image folder; pass --dataset folder"):
        data.load("cifar10", archive, download=False)
