"""mhtma_model.Inpainter: loading (checkpoint, pretrained folder), one held device and precision, images in
(PIL or numpy) and out (the input's size and mode, known pixels bit-identical), batches; and the inference
options every command line shares."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from mhtma_model import Inpainter
from tests.tiny_checkpoint import make_tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("inpainter")
    return {"plain": make_tiny_checkpoint(root / "plain.pt"), "sketch": make_tiny_checkpoint(root / "sketch.pt",
                                                                                             sketch=True)}


@pytest.fixture(scope="module")
def inpainter(checkpoints):
    return Inpainter.from_checkpoint(checkpoints["plain"], device="cpu", precision="fp32")


def photo(height=47, width=61, mode="RGB", top=0, left=0):
    """A crop of a real photo (scikit-image's astronaut) of an odd size."""
    from skimage import data

    image = Image.fromarray(data.astronaut()[100 + top:100 + top + height, 150 + left:150 + left + width])
    return image.convert(mode)


def hole(height=47, width=61, box=(9, 30, 14, 41)):
    mask = np.zeros((height, width), bool)
    mask[box[0]:box[1], box[2]:box[3]] = True
    return mask


def assert_inpainted(result, image, mask):
    """Same size and mode as ``image``; known pixels bit-identical; the hole changed."""
    assert result.size == image.size and result.mode == image.mode
    out, inp = np.asarray(result), np.asarray(image)
    np.testing.assert_array_equal(out[~mask], inp[~mask])
    assert not np.array_equal(out[mask], inp[mask])


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"], ids=["rgb", "rgba", "gray"])
def test_odd_size_photo_keeps_size_mode_and_known_pixels(inpainter, mode):
    image, mask = photo(mode=mode), hole()
    assert_inpainted(inpainter(image, Image.fromarray(mask.astype(np.uint8) * 255)), image, mask)


MASK_ARRAYS = {  # the rule: mhtma_model.images.mask_from_array
    "bool": lambda hole: hole,
    "uint8-0-1": lambda hole: hole.astype(np.uint8),
    "uint8-0-255": lambda hole: hole.astype(np.uint8) * 255,
    "int64-0-1": lambda hole: hole.astype(np.int64),
    "float32-0-1": lambda hole: hole.astype(np.float32),
    "uint8-rgb-0-255": lambda hole: np.repeat(hole[..., None].astype(np.uint8) * 255, 3, axis=2),
}


@pytest.mark.parametrize("mask_kind", list(MASK_ARRAYS))
def test_numpy_arrays_in_give_the_same_image_as_pil(inpainter, mask_kind):
    image, mask = photo(), hole()
    mask_array = MASK_ARRAYS[mask_kind](mask)
    from_arrays = inpainter(np.asarray(image), mask_array)
    from_pil = inpainter(image, Image.fromarray(mask.astype(np.uint8) * 255))
    assert_inpainted(from_arrays, image, mask)
    np.testing.assert_array_equal(np.asarray(from_arrays), np.asarray(from_pil))


def test_device_and_precision_are_resolved_once_and_held(checkpoints):
    auto = Inpainter.from_checkpoint(checkpoints["plain"], device="auto")
    assert auto.device == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert auto.precision == "auto" and not auto.generator.training
    assert not hasattr(auto.generator, "inference_precision")  # nothing hung on the module
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        Inpainter.from_checkpoint(checkpoints["plain"], device="cpu", precision="fp16")
    with pytest.raises(ValueError, match="device must be"):
        Inpainter.from_checkpoint(checkpoints["plain"], device="tpu")


def test_the_held_precision_is_what_the_forward_runs_in(checkpoints):
    seen = []
    bf16 = Inpainter.from_checkpoint(checkpoints["plain"], device="cpu", precision="bf16")
    handle = bf16.generator.refine.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    try:
        bf16(photo(), hole())
    finally:
        handle.remove()
    assert seen == [torch.bfloat16]


def test_batch_shares_a_forward_per_size_and_matches_single_calls(inpainter):
    images = [photo(), photo(top=20), photo(33, 40).convert("L"), photo(top=7)]
    masks = [hole(), hole(box=(1, 10, 2, 60)), hole(33, 40, (3, 20, 5, 30)), hole(box=(30, 46, 0, 20))]
    calls = []
    handle = inpainter.generator.register_forward_pre_hook(lambda mod, args: calls.append(args[0].shape[0]))
    try:
        results = inpainter.batch(images, masks)
    finally:
        handle.remove()
    assert sorted(calls) == [1, 3]  # the three 47x61 images in one forward, the 33x40 one alone
    for result, image, mask in zip(results, images, masks):
        assert_inpainted(result, image, mask)
        single = np.asarray(inpainter(image, mask)).astype(int)
        assert np.abs(np.asarray(result).astype(int) - single).max() <= 1  # batched float sums may round apart


@pytest.mark.parametrize("call, match", [
    pytest.param(lambda inp: inp.batch([photo(), photo()], [hole()]), "2 images, 1 masks", id="batch-lengths"),
    pytest.param(lambda inp: inp(np.zeros((47, 61, 3), np.float32), hole()), "uint8 .or bool.", id="float-array"),
    pytest.param(lambda inp: inp(photo(), hole().astype(np.float32) * 0.5), "must hold only 0 and 1",
                 id="float-mask-of-halves"),
    pytest.param(lambda inp: inp(photo(), hole().astype(np.int64) * 255), "must hold only 0 and 1",
                 id="int64-mask-of-255"),
    pytest.param(lambda inp: inp(photo(), hole()[None]), "mask array must have shape", id="mask-3d"),
    pytest.param(lambda inp: inp("photo.png", hole()), "image must be a PIL image or a numpy array",
                 id="a-path"),
    pytest.param(lambda inp: inp(photo(), hole(40, 61)), "mask size 61x40 differs", id="mask-size"),
    pytest.param(lambda inp: inp(photo(), hole(), hole()), "trained without sketches", id="sketch-for-plain"),
])
def test_bad_inputs_are_one_line_errors(inpainter, call, match):
    with pytest.raises((TypeError, ValueError), match=match) as info:
        call(inpainter)
    assert "\n" not in str(info.value)


def test_sketch_model_takes_a_sketch_or_runs_unguided(checkpoints):
    guided = Inpainter.from_checkpoint(checkpoints["sketch"], device="cpu")
    image, mask = photo(), hole()
    line = np.zeros(mask.shape, np.uint8)
    line[20, 15:40] = 255
    assert guided.uses_sketch
    with_line, without = guided(image, mask, line), guided(image, mask)
    assert_inpainted(with_line, image, mask)
    assert_inpainted(without, image, mask)
    assert not np.array_equal(np.asarray(with_line), np.asarray(without))


def test_save_pretrained_round_trip(inpainter, tmp_path):
    folder = inpainter.save_pretrained(tmp_path / "model")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((folder / "config.json").read_text())
    assert meta["format"] == "mhtma-inpainter" and meta["config"]["model"]["base_channels"] == 4
    loaded = Inpainter.from_pretrained(folder, device="cpu", precision="fp32")
    for name, tensor in inpainter.generator.state_dict().items():
        assert torch.equal(loaded.generator.state_dict()[name], tensor), name
    image, mask = photo(), hole()
    np.testing.assert_array_equal(np.asarray(loaded(image, mask)), np.asarray(inpainter(image, mask)))


@pytest.mark.parametrize("damage, match", [
    pytest.param("no-weights", "model.safetensors is missing", id="no-weights"),
    pytest.param("foreign-config", "is 'other', not 'mhtma-inpainter'", id="foreign-config"),
    pytest.param("other-network", "cannot use", id="weights-of-another-network"),
])
def test_from_pretrained_refuses_a_broken_folder(inpainter, checkpoints, tmp_path, damage, match):
    folder = inpainter.save_pretrained(tmp_path / "model")
    if damage == "no-weights":
        (folder / "model.safetensors").unlink()
    elif damage == "foreign-config":
        (folder / "config.json").write_text(json.dumps({"format": "other"}))
    else:
        Inpainter.from_checkpoint(checkpoints["sketch"], device="cpu").save_pretrained(tmp_path / "sketch")
        (tmp_path / "sketch" / "model.safetensors").replace(folder / "model.safetensors")
    with pytest.raises(ValueError, match=match):
        Inpainter.from_pretrained(folder)


def test_from_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="checkpoint not found: .*missing.pt"):
        Inpainter.from_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot use checkpoint .*broken.pt"):
        Inpainter.from_checkpoint(tmp_path / "broken.pt")


# ------------------------------------------------------------------------- the shared command-line options

def _parsers():
    from mhtma_model.cli import evaluate, inpaint, ui

    return {"mhtma-inpaint": inpaint.build_parser(), "mhtma-eval": evaluate.build_parser(),
            "mhtma-ui": ui.build_parser()}


@pytest.mark.parametrize("command", ["mhtma-inpaint", "mhtma-eval", "mhtma-ui"])
def test_inference_commands_share_options_and_defaults(command):
    parser = _parsers()[command]
    options = {a.dest: a for a in parser._actions}  # argparse keeps no public list of its options
    reference = {a.dest: a for a in _parsers()["mhtma-inpaint"]._actions}
    for name, default in (("device", "auto"), ("threads", None), ("precision", "auto"), ("compile", False)):
        assert options[name].default == default, name
        assert options[name].help == reference[name].help, name


def test_load_takes_a_checkpoint_file_or_a_pretrained_folder(inpainter, checkpoints, tmp_path):
    from mhtma_model.cli import ui

    folder = inpainter.save_pretrained(tmp_path / "model")
    image, mask = photo(), hole()
    expected = np.asarray(inpainter(image, mask))
    for source in (folder, checkpoints["plain"]):
        loaded = Inpainter.load(source, device="cpu", precision="fp32")
        np.testing.assert_array_equal(np.asarray(loaded(image, mask)), expected, err_msg=str(source))
    cached = ui.InpainterCache("cpu", "fp32").get(folder)  # the web page's --checkpoint takes a folder too
    np.testing.assert_array_equal(np.asarray(cached(image, mask)), expected)
    with pytest.raises(ValueError, match="checkpoint not found"):
        Inpainter.load(tmp_path / "nothing")
