"""Data: recursive image listing, odd image modes to RGB, unreadable files (one warning each, never a
crash), reproducible augmentation and masks, the split, and the embedded scikit-image demo dataset."""
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from mhtma_model.data import InpaintingDataset, UnreadableImageWarning, demo_dataset_root, split_paths
from mhtma_model.images import UnreadableImageError, list_images, load_rgb
from mhtma_model.masks import MaskFolder, free_form_mask


def _gradient(height=48, width=64):
    y, x = np.mgrid[0:height, 0:width]
    return np.dstack([x * 255 // (width - 1), y * 255 // (height - 1), (x + y) % 256]).astype(np.uint8)


@pytest.fixture()
def odd_folder(tmp_path):
    """Every odd case in one folder: 9 images (2 corrupt), a .txt file and a hidden file."""
    rgb = _gradient()
    Image.fromarray(rgb).save(tmp_path / "a_rgb.jpg", quality=95)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "b_gray.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c_cmyk.jpg", quality=95)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    rgba[:, :8, 3] = 0  # transparent left strip -> white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "d_rgba.png")
    sixteen = np.zeros((48, 64), np.uint16)
    sixteen[:, 32:] = 65535
    sixteen[:24, :32] = 128 * 257
    Image.fromarray(sixteen).save(tmp_path / "e_16bit.png")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "f_palette.PNG")
    (tmp_path / "nested" / "deeper").mkdir(parents=True)
    Image.fromarray(rgb[::-1]).save(tmp_path / "nested" / "deeper" / "g_nested.bmp")
    (tmp_path / "h_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    good = (tmp_path / "a_rgb.jpg").read_bytes()
    (tmp_path / "i_truncated.jpg").write_bytes(good[: len(good) // 3])
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes(b"junk")
    return tmp_path


def test_list_images_recursive_sorted(odd_folder):
    names = [p.name for p in list_images(odd_folder)]
    assert names == ["a_rgb.jpg", "b_gray.png", "c_cmyk.jpg", "d_rgba.png", "e_16bit.png", "f_palette.PNG",
                     "h_corrupt.png", "i_truncated.jpg", "g_nested.bmp"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_images(odd_folder / "missing")


def test_load_rgb_modes(odd_folder):
    rgb = _gradient().astype(int)
    for name in ["a_rgb.jpg", "b_gray.png", "c_cmyk.jpg", "d_rgba.png", "e_16bit.png", "f_palette.PNG"]:
        image = load_rgb(odd_folder / name)
        assert image.mode == "RGB" and image.size == (64, 48), name
    gray = np.asarray(load_rgb(odd_folder / "b_gray.png"))
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 0], rgb[..., 0])
    cmyk = np.asarray(load_rgb(odd_folder / "c_cmyk.jpg")).astype(int)
    assert np.abs(cmyk - rgb).mean() < 8, "CMYK JPEG should come back close to the original colours"
    rgba = np.asarray(load_rgb(odd_folder / "d_rgba.png"))
    assert (rgba[:, :8] == 255).all(), "transparent pixels are composited on white"
    assert np.array_equal(rgba[:, 8:], rgb[:, 8:])
    sixteen = np.asarray(load_rgb(odd_folder / "e_16bit.png"))
    assert (sixteen[:, 32:] == 255).all() and (sixteen[:24, :32] == 128).all() and (sixteen[24:, :32] == 0).all()
    for name in ["h_corrupt.png", "i_truncated.jpg", "notes.txt"]:
        with pytest.raises(UnreadableImageError, match=name):
            load_rgb(odd_folder / name)


@pytest.mark.parametrize("train", [pytest.param(True, id="train"), pytest.param(False, id="val")])
def test_dataset_odd_folder_one_warning_per_corrupt_file(odd_folder, train):
    size = 32
    ds = InpaintingDataset(list_images(odd_folder), size, train=train, seed=3)
    assert len(ds) == 9
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for epoch in range(2):
            ds.set_epoch(epoch)
            items = [ds[i] for i in range(len(ds))]
    unreadable = [w for w in caught if issubclass(w.category, UnreadableImageWarning)]
    assert len(unreadable) == 2, [str(w.message) for w in unreadable]
    assert {"h_corrupt.png", "i_truncated.jpg"} == {
        name for w in unreadable for name in ("h_corrupt.png", "i_truncated.jpg") if name in str(w.message)}
    for i, item in enumerate(items):
        assert item["index"] == i
        assert item["image"].shape == (3, size, size) and item["image"].dtype == torch.float32
        assert item["image"].min() >= -1 and item["image"].max() <= 1
        assert item["mask"].shape == (1, size, size) and item["mask"].dtype == torch.float32
        assert set(item["mask"].unique().tolist()) <= {0.0, 1.0} and item["mask"].sum() > 0
    # the corrupt file (index 6) is replaced by the next readable image (index 7 is corrupt too -> 8)
    replaced, source = items[6]["image"], items[8]["image"]
    if not train:
        assert torch.equal(replaced, source)


def test_dataset_all_unreadable_raises(tmp_path):
    for name in ("x.png", "y.jpg"):
        (tmp_path / name).write_bytes(b"garbage")
    ds = InpaintingDataset(list_images(tmp_path), 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreadableImageWarning)
        with pytest.raises(UnreadableImageError, match="none of the 2 images"):
            ds[0]


@pytest.fixture()
def photo_folder(tmp_path):
    g = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(g.integers(0, 256, (40 + 8 * i, 56, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    return tmp_path


def _stack(items, key):
    return torch.stack([item[key] for item in items])


def test_dataset_reproducible_per_seed_epoch_index(photo_folder):
    paths = list_images(photo_folder)
    a, b = InpaintingDataset(paths, 32, seed=5), InpaintingDataset(paths, 32, seed=5)
    a.set_epoch(2)
    b.set_epoch(2)
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"])
        expected_mask = free_form_mask(32, 32, np.random.default_rng([5, 2, i]))
        assert np.array_equal(x["mask"][0].numpy(), expected_mask)
    b.set_epoch(3)
    assert not torch.equal(_stack([a[i] for i in range(6)], "mask"), _stack([b[i] for i in range(6)], "mask"))
    c = InpaintingDataset(paths, 32, seed=6)
    c.set_epoch(2)
    assert not torch.equal(_stack([a[i] for i in range(6)], "image"), _stack([c[i] for i in range(6)], "image"))


def test_dataset_val_is_deterministic_and_centre_cropped(photo_folder):
    paths = list_images(photo_folder)
    ds = InpaintingDataset(paths, 40, train=False, seed=1)
    first = ds[5]
    ds.set_epoch(7)
    again = ds[5]
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["mask"], again["mask"])
    assert np.array_equal(first["mask"][0].numpy(), free_form_mask(40, 40, np.random.default_rng([1, 5])))
    # 80x56 image: shorter side 56 -> 40, 80 -> 57; centre crop rows (57-40)//2 = 8
    source = np.asarray(Image.open(paths[5]).convert("RGB").resize((40, 57), Image.Resampling.BICUBIC))
    expected = torch.from_numpy(source[8:48].astype(np.float32) / 127.5 - 1).permute(2, 0, 1)
    assert torch.equal(first["image"], expected)


def test_dataset_flips_about_half_the_time(tmp_path):
    half = np.zeros((32, 32, 3), np.uint8)
    half[:, 16:] = 255
    Image.fromarray(half).save(tmp_path / "half.png")
    ds = InpaintingDataset([tmp_path / "half.png"], 32, seed=0)
    flipped = []
    for epoch in range(40):
        ds.set_epoch(epoch)
        image = ds[0]["image"]
        flipped.append(bool(image[0, 0, 0] > 0))  # white on the left = flipped
    assert 8 <= sum(flipped) <= 32
    val = InpaintingDataset([tmp_path / "half.png"], 32, train=False)
    assert val[0]["image"][0, 0, 0] < 0


def test_dataloader_same_batches_with_and_without_workers(photo_folder):
    ds = InpaintingDataset(list_images(photo_folder), 24, seed=2)
    ds.set_epoch(1)

    def batches(workers):
        loader = torch.utils.data.DataLoader(ds, batch_size=3, shuffle=False, num_workers=workers)
        return [(b["image"], b["mask"]) for b in loader]

    for (x0, m0), (x2, m2) in zip(batches(0), batches(2)):
        assert torch.equal(x0, x2) and torch.equal(m0, m2)


def test_dataset_with_mask_folder(photo_folder, tmp_path_factory):
    masks_root = tmp_path_factory.mktemp("masks")
    for i in range(3):
        m = np.zeros((64, 64), np.uint8)
        m[: 16 * (i + 1)] = 255
        Image.fromarray(m).save(masks_root / f"m{i}.png")
    folder = MaskFolder(masks_root)
    val = InpaintingDataset(list_images(photo_folder), 32, masks=folder, train=False)
    for i in range(4):
        assert val[i]["mask"].mean().item() == pytest.approx((i % 3 + 1) / 4)
    train = InpaintingDataset(list_images(photo_folder), 32, masks=folder, train=True)
    ratios = {round(train[i]["mask"].mean().item(), 3) for i in range(6)}
    assert ratios <= {0.25, 0.5, 0.75}


def test_dataset_sketch_channel(photo_folder):
    ds = InpaintingDataset(list_images(photo_folder), 32, sketch=True)
    item = ds[0]
    assert item["sketch"].shape == (1, 32, 32) and item["sketch"].dtype == torch.float32
    assert set(item["sketch"].unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("kwargs, match", [
    pytest.param({"size": 4}, "size", id="size"),
    pytest.param({"masks": "folder"}, "MaskFolder", id="masks"),
    pytest.param({"seed": -1}, "seed", id="seed"),
])
def test_dataset_rejects_bad_arguments(photo_folder, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        InpaintingDataset(list_images(photo_folder), **{"size": 32, **kwargs})
    with pytest.raises(ValueError, match="empty"):
        InpaintingDataset([], 32)


def test_split_paths():
    paths = [f"img{i}.png" for i in range(20)]
    train, val = split_paths(paths, 0.25, seed=1)
    assert len(val) == 5 and len(train) == 15
    assert sorted(train + val) == sorted(paths) and not set(train) & set(val)
    assert train == [p for p in paths if p in train], "order is kept"
    assert split_paths(paths, 0.25, seed=1) == (train, val)
    assert split_paths(paths, 0.25, seed=2) != (train, val)
    assert split_paths(paths[:3], 0.01, seed=0)[1] != [], "a positive fraction gives at least one val image"
    assert split_paths(paths[:1], 0.5, seed=0) == (paths[:1], [])
    assert split_paths(paths, 0.0) == (paths, [])
    with pytest.raises(ValueError, match="val_fraction"):
        split_paths(paths, 1.0)


def test_demo_dataset_root_cached_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("MHTMA_CACHE", str(tmp_path))
    root = demo_dataset_root(count=10, size=32)
    assert root.is_dir() and root.is_relative_to(tmp_path / "demo")
    paths = list_images(root)
    assert len(paths) == 10
    sizes = {Image.open(p).size for p in paths}
    assert sizes == {(32, 32)}
    assert len({p.name.split("_")[0] for p in paths}) >= 5, "crops come from several sample photos"
    stamp = {p: p.stat().st_mtime_ns for p in paths}
    assert demo_dataset_root(count=10, size=32) == root
    assert {p: p.stat().st_mtime_ns for p in paths} == stamp, "cached: not rewritten"
    assert not [p for p in (tmp_path / "demo").iterdir() if p.name.startswith(".tmp-")], "no temp folder left"
    items = InpaintingDataset(paths, 32)
    assert items[0]["image"].shape == (3, 32, 32)


def test_load_rgb_reduced_jpeg_decoding_keeps_min_side(tmp_path):
    big = np.tile(_gradient(), (8, 8, 1))  # 384 x 512
    Image.fromarray(big).save(tmp_path / "big.jpg", quality=90)
    full = load_rgb(tmp_path / "big.jpg")
    small = load_rgb(tmp_path / "big.jpg", min_side=100)
    assert full.size == (512, 384)
    assert small.size == (256, 192), "decoded at 1/2 scale: the smallest DCT scale with both sides >= 100"
    assert load_rgb(tmp_path / "big.jpg", min_side=200).size == (512, 384)
