"""Every picture mode round-trips through the three ways a user inpaints (the Inpainter API, `mhtma-inpaint`,
the web page's download): known pixels identical in the input's own values, the mode and bit depth kept
where the output format holds them (else converted with one note), alpha, EXIF and the ICC profile kept;
files 0644 under umask 022. Real files through Pillow, a real tiny generator."""
import os

import numpy as np
import pytest
from PIL import ExifTags, Image, ImageCms, ImageOps

from mhtma_model import Inpainter, deep_colour
from mhtma_model.cli import ui
from mhtma_model.image_modes import paste_prediction, save_image, writable
from mhtma_model.images import open_image
from mhtma_model.cli.inpaint import main as inpaint_main
from tests.tiny_checkpoint import make_tiny_checkpoint

H, W = 20, 28
HOLE = np.zeros((H, W), bool)
HOLE[5:14, 8:20] = True
ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
MAKE = "mhtma test camera"
EXIF_FORMATS = ("PNG", "JPEG", "WEBP")  # formats whose EXIF Pillow reads back into info["exif"]
ICC_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF")
SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "TIFF": ".tif", "BMP": ".bmp"}

#: (format, mode) pairs Pillow writes as they are.
CASES = [("PNG", m) for m in ("1", "L", "LA", "I;16", "P", "RGB", "RGBA")] \
    + [("JPEG", m) for m in ("L", "RGB", "CMYK")] + [("WEBP", m) for m in ("RGB", "RGBA")] \
    + [("TIFF", m) for m in ("1", "L", "LA", "I;16", "I", "F", "P", "PA", "RGB", "RGBA", "CMYK")] \
    + [("BMP", m) for m in ("1", "L", "P", "RGB")]
CASE_IDS = [f"{fmt.lower()}-{mode}" for fmt, mode in CASES]
#: The mode each input mode has in a PNG download / mhtma-inpaint output (a change comes with one note).
PNG_WRITES = {"1": "1", "L": "L", "LA": "LA", "I;16": "I;16", "I": "I;16", "F": "L", "P": "P", "PA": "RGBA",
              "RGB": "RGB", "RGBA": "RGBA", "CMYK": "RGB"}


def picture(mode: str, seed: int = 0) -> Image.Image:
    """A noisy ``mode`` picture using its whole value range (16-bit values above 255, floats in [0, 1])."""
    rng = np.random.default_rng(seed)
    grey = Image.fromarray(rng.integers(0, 256, (H, W), dtype=np.uint8))
    rgb = Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    makers = {
        "1": lambda: Image.fromarray(rng.random((H, W)) > 0.5),
        "L": lambda: grey,
        "LA": lambda: Image.merge("LA", (grey, grey.transpose(Image.Transpose.FLIP_LEFT_RIGHT))),
        "I;16": lambda: Image.fromarray(rng.integers(0, 65536, (H, W), dtype=np.uint16)),
        "I": lambda: Image.fromarray(rng.integers(0, 65536, (H, W)).astype(np.int32)),
        "F": lambda: Image.fromarray(rng.random((H, W)).astype(np.float32)),
        "P": lambda: rgb.quantize(16),
        "PA": lambda: Image.merge("PA", (rgb.quantize(16).convert("L"), grey)),
        "RGB": lambda: rgb,
        "RGBA": lambda: Image.merge("RGBA", (*rgb.split(), grey)),
        "CMYK": lambda: Image.merge("CMYK", [Image.fromarray(rng.integers(0, 256, (H, W), dtype=np.uint8))
                                             for _ in range(4)]),
    }
    image = makers[mode]()
    if mode == "PA":
        image.putpalette(rgb.quantize(16).getpalette())
    return image


def write_case(folder, fmt: str, mode: str):
    """The case's picture as a file with an ICC profile and EXIF where the format has them -> its path."""
    image = picture(mode)
    options = {"icc_profile": ICC} if fmt in ICC_FORMATS else {}
    if fmt in EXIF_FORMATS:
        exif = Image.Exif()
        exif[ExifTags.Base.Make] = MAKE
        options["exif"] = exif.tobytes()
    path = folder / f"photo{SUFFIX[fmt]}"
    image.save(path, fmt, **options)
    Image.fromarray(HOLE.astype(np.uint8) * 255).save(folder / "photo-mask.png")
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("modes") / "tiny.pt")


@pytest.fixture(scope="module")
def inpainter(checkpoint):
    return Inpainter.from_checkpoint(checkpoint, device="cpu", precision="fp32")


@pytest.fixture
def umask_022():
    before = os.umask(0o022)
    yield
    os.umask(before)


def assert_known_identical(result: Image.Image, expected: Image.Image):
    assert (result.mode, result.size) == (expected.mode, expected.size)
    np.testing.assert_array_equal(np.asarray(result)[~HOLE], np.asarray(expected)[~HOLE])


def assert_metadata_kept(result: Image.Image, fmt: str):
    if fmt in ICC_FORMATS:
        assert result.info.get("icc_profile") == ICC
    if fmt in EXIF_FORMATS:
        assert result.getexif().get(ExifTags.Base.Make) == MAKE


# ------------------------------------------------------------------------------------------ the table
@pytest.mark.parametrize("fmt, mode", CASES, ids=CASE_IDS)
def test_inpainter_keeps_the_mode_values_and_metadata(inpainter, tmp_path, fmt, mode):
    source = open_image(write_case(tmp_path, fmt, mode))
    assert source.mode == mode
    result = inpainter(source, HOLE)
    assert_known_identical(result, source)
    assert_metadata_kept(result, fmt)
    if mode in ("I;16", "I"):  # the hole holds the prediction in 16-bit steps, not a flat 255 or 65535
        filled = np.asarray(result)[HOLE]
        assert (filled % 257 == 0).all() and len(np.unique(filled)) > 1


@pytest.mark.parametrize("fmt, mode", CASES, ids=CASE_IDS)
def test_cli_writes_the_mode_or_one_note(checkpoint, tmp_path, capsys, umask_022, fmt, mode):
    path = write_case(tmp_path, fmt, mode)
    code = inpaint_main(["--checkpoint", str(checkpoint), "--image", str(path), "--mask",
                         str(tmp_path / "photo-mask.png"), "--output", str(tmp_path / "out"), "--device", "cpu"])
    assert code == 0
    expected, note = writable(open_image(path), "PNG")
    written = tmp_path / "out" / "photo.png"
    with Image.open(written) as result:
        assert result.mode == PNG_WRITES[mode]
        assert_known_identical(result, expected)
        assert_metadata_kept(result, fmt)
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert notes == ([f"note: photo: {note}"] if note else [])
    assert written.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("fmt, mode", CASES, ids=CASE_IDS)
def test_page_download_keeps_the_uploaded_file(inpainter, tmp_path, umask_022, fmt, mode):
    path = write_case(tmp_path, fmt, mode)
    hole_layer = np.zeros((H, W, 4), np.uint8)
    hole_layer[HOLE] = 255
    editor = {"background": None, "layers": [Image.fromarray(hole_layer)], "composite": None}
    image, mask, sketch = ui.collect_inputs(editor, image_file=str(path))
    result, _ = ui.run_inpainting(inpainter, image, mask, sketch)
    download, note = ui.save_download(result, tmp_path, 1)
    expected, expected_note = writable(open_image(path), "PNG")
    assert note == expected_note and (note is None) == (PNG_WRITES[mode] == mode)
    with Image.open(download) as got:
        assert got.mode == PNG_WRITES[mode]
        assert_known_identical(got, expected)
        assert_metadata_kept(got, fmt)
    assert download.stat().st_mode & 0o777 == 0o644


# ------------------------------------------------------------------------------------------ orientation
def test_jpeg_orientation_8_is_applied_once_and_its_exif_and_icc_kept(checkpoint, tmp_path):
    y, x = np.mgrid[0:H, 0:W]
    upright = Image.fromarray(np.stack([x * 9, y * 12, 255 - x * 9], axis=2).astype(np.uint8))  # as seen
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = MAKE
    exif[ExifTags.Base.Orientation] = 8  # the viewer rotates the stored pixels 90 degrees counter-clockwise
    upright.transpose(Image.Transpose.ROTATE_270).save(tmp_path / "photo.jpg", quality=95, subsampling=0,
                                                       exif=exif.tobytes(), icc_profile=ICC)
    Image.fromarray(HOLE.astype(np.uint8) * 255).save(tmp_path / "photo-mask.png")
    code = inpaint_main(["--checkpoint", str(checkpoint), "--image", str(tmp_path / "photo.jpg"), "--mask",
                         str(tmp_path / "photo-mask.png"), "--output", str(tmp_path / "out"), "--device", "cpu"])
    assert code == 0
    with Image.open(tmp_path / "photo.jpg") as stored:
        seen = ImageOps.exif_transpose(stored).convert("RGB")
    with Image.open(tmp_path / "out" / "photo.png") as result:
        assert result.size == (W, H)
        assert_known_identical(result, seen)
        assert result.getexif().get(ExifTags.Base.Orientation) == 1
        assert result.getexif().get(ExifTags.Base.Make) == MAKE
        assert result.info.get("icc_profile") == ICC
        # the JPEG's pixels are the upright picture, not a second rotation of it
        assert np.abs(np.asarray(result, dtype=int)[~HOLE] - np.asarray(upright, dtype=int)[~HOLE]).max() < 16


# ------------------------------------------------------------------------------------------ conversions
@pytest.mark.parametrize("fmt, mode, written", [
    ("JPEG", "RGB", "RGB"), ("JPEG", "CMYK", "CMYK"),
    ("TIFF", "F", "F"), ("TIFF", "CMYK", "CMYK"), ("TIFF", "PA", "PA"), ("TIFF", "I", "I"),
    ("PNG", "I", "I;16"), ("PNG", "F", "L"), ("PNG", "CMYK", "RGB"), ("PNG", "PA", "RGBA"),
    ("JPEG", "I;16", "L"), ("JPEG", "RGBA", "RGB"), ("WEBP", "L", "RGB"), ("WEBP", "LA", "RGBA"),
    ("BMP", "RGBA", "RGB"), ("BMP", "LA", "L"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_save_image_keeps_the_mode_or_says_how_it_converted(tmp_path, fmt, mode, written):
    image = picture(mode)
    path = tmp_path / f"out{SUFFIX[fmt]}"
    note = save_image(image, path)
    with Image.open(path) as got:
        got.load()
    assert got.mode == written or (written == "I;16" and got.mode.startswith("I;16"))
    assert (note is None) == (written == mode and fmt != "JPEG")
    if note:
        assert "\n" not in note and (f"cannot hold {mode}" in note) == (written != mode)
        assert ("lossy" in note) == (fmt == "JPEG")
    if written == mode and fmt != "JPEG":
        np.testing.assert_array_equal(np.asarray(got), np.asarray(image))


def test_a_16_bit_png_keeps_its_values(tmp_path):
    """The 16-bit grey PNG of a scanner: written back 16-bit, its values unchanged (not 8-bit, not 255s)."""
    values = (np.arange(H * W, dtype=np.uint16).reshape(H, W) * 97) % 65535
    save_image(Image.fromarray(values), tmp_path / "scan.png")
    with Image.open(tmp_path / "scan.png") as got:
        np.testing.assert_array_equal(np.asarray(got), values)


def test_paste_keeps_a_palette_pictures_palette():
    source = picture("P")
    pred = np.zeros((H, W, 3), np.uint8)
    result = paste_prediction(source, pred, HOLE, (0, H, 0, W))
    assert result.getpalette() == source.getpalette()
    darkest = int(np.argmin(np.asarray(source.getpalette(), int).reshape(-1, 3)[:16].sum(axis=1)))
    assert (np.asarray(result)[HOLE] == darkest).all()  # black predicted: the palette's nearest colour


def test_save_image_refuses_an_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match="give it a suffix"):
        save_image(picture("RGB"), tmp_path / "out.unknown")
    assert list(tmp_path.iterdir()) == []



# ------------------------------------------------------------------------------------------ 16-bit colour
DEEP_CASES = [("PNG", 3), ("PNG", 4), ("TIFF", 3), ("TIFF-deflate", 3)]
DEEP_IDS = ["png-RGB;16", "png-RGBA;16", "tiff-RGB;16", "tiff-deflate-RGB;16"]


def write_deep(folder, fmt: str, channels: int):
    """A 16-bit colour file (values using both bytes) with its mask -> (path, values)."""
    values = np.random.default_rng(3).integers(0, 65536, (H, W, channels), dtype=np.uint16)
    path = folder / f"photo{SUFFIX[fmt.split('-')[0]]}"
    if fmt == "PNG":
        picture16 = deep_colour.from_array(values)
        picture16.info.update(icc_profile=ICC, exif=_exif_bytes())
        save_image(picture16, path)
    else:
        tifffile = pytest.importorskip("tifffile")
        tifffile.imwrite(path, values, photometric="rgb", compression="zlib" if "deflate" in fmt else None)
    Image.fromarray(HOLE.astype(np.uint8) * 255).save(folder / "photo-mask.png")
    return path, values


def _exif_bytes() -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = MAKE
    return exif.tobytes()


def assert_deep_inpainted(result: Image.Image, values: np.ndarray):
    got = deep_colour.values_of(result)
    assert got is not None and got.shape == values.shape
    np.testing.assert_array_equal(got[~HOLE], values[~HOLE])
    filled = got[HOLE][:, :3]
    assert (filled % 257 == 0).all() and len(np.unique(filled)) > 1
    if values.shape[2] == 4:  # alpha copied, not inpainted
        np.testing.assert_array_equal(got[..., 3], values[..., 3])


def test_pillow_decodes_the_16_bit_png_written_here(tmp_path):
    path, values = write_deep(tmp_path, "PNG", 4)
    with Image.open(path) as high:
        np.testing.assert_array_equal(np.asarray(high), values >> 8)
    np.testing.assert_array_equal(deep_colour.values_of(open_image(path)), values)


@pytest.mark.parametrize("surface", ["inpainter", "cli", "page"])
@pytest.mark.parametrize("fmt, channels", DEEP_CASES, ids=DEEP_IDS)
def test_16_bit_colour_keeps_its_16_bits(checkpoint, inpainter, tmp_path, fmt, channels, surface):
    path, values = write_deep(tmp_path, fmt, channels)
    if surface == "inpainter":
        result = inpainter(open_image(path), HOLE)
    elif surface == "cli":
        assert inpaint_main(["--checkpoint", str(checkpoint), "--image", str(path), "--mask",
                             str(tmp_path / "photo-mask.png"), "--output", str(tmp_path / "out"),
                             "--device", "cpu"]) == 0
        result = open_image(tmp_path / "out" / "photo.png")
    else:
        image, mask, sketch = ui.collect_inputs({"background": None, "layers": [], "composite": None},
                                                str(tmp_path / "photo-mask.png"), None, str(path))
        download, note = ui.save_download(ui.run_inpainting(inpainter, image, mask, sketch)[0], tmp_path, 1)
        assert note is None
        result = open_image(download)
    assert_deep_inpainted(result, values)
    if fmt == "PNG":
        assert_metadata_kept(result, "PNG")


def test_16_bit_colour_in_an_8_bit_format_says_so(tmp_path):
    picture16 = deep_colour.from_array(np.full((H, W, 3), 40000, np.uint16))
    note = save_image(picture16, tmp_path / "out.jpg")
    assert note and "16-bit RGB" in note and "PNG keeps it" in note


def test_the_inpainter_takes_a_16_bit_colour_array(inpainter):
    values = np.random.default_rng(5).integers(0, 65536, (H, W, 3), dtype=np.uint16)
    assert_deep_inpainted(inpainter(values, HOLE), values)


def test_paste_keeps_a_palette_pictures_transparency():
    """A palette picture with a transparent entry: hole pixels that were transparent stay so, the others get
    opaque colours only (never the transparent entry, whatever its colour)."""
    source = picture("P")
    clear = int(np.asarray(source)[0, 0])
    source.info["transparency"] = clear
    pred = np.broadcast_to(np.array(source.getpalette()[3 * clear:3 * clear + 3], np.uint8), (H, W, 3)).copy()
    result = np.asarray(paste_prediction(source, pred, HOLE, (0, H, 0, W)))
    was_clear = np.asarray(source) == clear
    assert (result[HOLE & was_clear] == clear).all() and (result[HOLE & ~was_clear] != clear).all()
    assert (HOLE & was_clear).any() and (HOLE & ~was_clear).any()


@pytest.mark.parametrize("name, lossy", [("result.jpg", True), ("result.tif", False), ("result.webp", False)],
                         ids=["jpeg-says-lossy", "tiff-exact", "webp-exact"])
def test_cli_output_file_says_when_its_format_changes_known_pixels(checkpoint, tmp_path, capsys, name, lossy):
    path = write_case(tmp_path, "PNG", "RGB")
    assert inpaint_main(["--checkpoint", str(checkpoint), "--image", str(path), "--mask",
                         str(tmp_path / "photo-mask.png"), "--output", str(tmp_path / name), "--device", "cpu"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert notes == (["note: photo: JPEG is lossy, so the known pixels changed slightly too "
                      "(.png or .tif keeps them exact)"] if lossy else [])
    if not lossy:
        with Image.open(tmp_path / name) as result:
            assert_known_identical(result, open_image(path))


def test_cli_says_a_conversion_once_for_a_folder(checkpoint, tmp_path, capsys):
    for folder in ("photos", "masks"):
        (tmp_path / folder).mkdir()
    for name in ("a", "b", "c"):
        picture("CMYK").save(tmp_path / "photos" / f"{name}.jpg")
        Image.fromarray(HOLE.astype(np.uint8) * 255).save(tmp_path / "masks" / f"{name}.png")
    assert inpaint_main(["--checkpoint", str(checkpoint), "--image", str(tmp_path / "photos"), "--mask",
                         str(tmp_path / "masks"), "--output", str(tmp_path / "out"), "--device", "cpu"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "cannot hold" in line]
    assert notes == ["note: a: PNG cannot hold CMYK pictures: written as RGB (TIFF keeps it)"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png", "c.png"]


def test_inpainter_warns_once_for_a_mode_it_does_not_keep(inpainter):
    premultiplied = picture("RGBA").convert("RGBa")
    with pytest.warns(UserWarning, match="RGBa pictures are inpainted as RGBA"):
        result = inpainter(premultiplied, HOLE)
    assert result.mode == "RGBA"
