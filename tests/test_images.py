"""mhtma_model.images: the one reader of image and mask files (errors, header checks, file pairing)."""
import numpy as np
import pytest
from PIL import Image

from mhtma_model.images import (UnreadableImageError, files_by_key, load_mask, mask_from_array, open_image,
                                pair_key, positive_size)


class Refused(Exception):
    pass


def test_check_header_sees_the_size_and_its_error_propagates(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (40, 24)).save(path)
    seen = []
    assert open_image(path, check_header=lambda img: seen.append(img.size)).size == (40, 24)
    assert seen == [(40, 24)]

    def refuse(img):
        raise Refused(f"{img.size}")

    with pytest.raises(Refused, match=r"\(40, 24\)"):
        open_image(path, check_header=refuse)


@pytest.mark.parametrize("content", [b"not an image", b"\x89PNG\r\n\x1a\n" + b"\0" * 40],
                         ids=["text", "truncated-png"])
def test_unreadable_files_name_the_path(tmp_path, content):
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    with pytest.raises(UnreadableImageError, match="broken.png"):
        open_image(path)
    with pytest.raises(UnreadableImageError, match="cannot read mask .*broken.png"):
        load_mask(path)


def test_files_pair_by_relative_path_without_extension(tmp_path):
    for name in ("a/b.jpg", "a/b.png", "c.webp", ".hidden.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8)).save(tmp_path / name)
    keyed = files_by_key(tmp_path)
    assert sorted(keyed) == ["a/b", "c"] and len(keyed["a/b"]) == 2
    assert pair_key(tmp_path / "a" / "b.jpg", tmp_path) == "a/b"


@pytest.mark.parametrize("size", [(0, 4), (4, -1), (True, 4), (2.5, 4)], ids=["zero", "negative", "bool", "float"])
def test_positive_size_refuses_bad_sides(size):
    with pytest.raises(ValueError, match="owner: (height|width) must be a positive int"):
        positive_size(*size, "owner")
    assert positive_size(np.int64(3), 4, "owner") == (3, 4)


HOLE = np.array([[0, 1, 1], [0, 0, 1]], bool)


@pytest.mark.parametrize("array", [
    pytest.param(HOLE, id="bool"),
    pytest.param(HOLE.astype(np.uint8), id="uint8-0-1"),
    pytest.param(HOLE.astype(np.uint8) * 255, id="uint8-0-255"),
    pytest.param(np.where(HOLE, 200, 100).astype(np.uint8), id="uint8-grey-picture"),
    pytest.param(HOLE.astype(np.int64), id="int64-0-1"),
    pytest.param(HOLE.astype(np.float64), id="float64-0-1"),
    pytest.param(np.repeat(HOLE[..., None].astype(np.uint8) * 255, 3, axis=2), id="uint8-rgb-0-255"),
])
def test_mask_arrays_mean_what_they_say(array):
    np.testing.assert_array_equal(mask_from_array(array), HOLE)


@pytest.mark.parametrize("array, match", [
    pytest.param(HOLE.astype(np.float32) * 0.5, "must hold only 0 and 1", id="float-halves"),
    pytest.param(HOLE.astype(np.uint16) * 65535, "must hold only 0 and 1", id="uint16-0-65535"),
    pytest.param(np.stack([HOLE, HOLE], axis=2), "must have shape", id="two-channels"),
])
def test_other_mask_arrays_are_a_clear_error(array, match):
    with pytest.raises(ValueError, match=match):
        mask_from_array(array)
