"""Checkpoints: atomic writes survive a crash mid-save, weights_only loads, load_generator rebuilds the model from
the file alone, and every failure is a CheckpointError naming the path and the reason."""
import os
import pickle

import pytest
import torch

from mhtma_model import checkpoint as ckpt_mod
from mhtma_model.checkpoint import CheckpointError, load_checkpoint, load_generator, save_checkpoint
from mhtma_model.config import Config, build_generator

TINY = {"model": {"base_channels": 4, "backend": "torch"}, "data": {"size": 32}}


def _payload(seed=0, cfg=None):
    cfg = cfg or Config.from_dict(TINY)
    torch.manual_seed(seed)
    generator = build_generator(cfg.model)
    return {"format": "mhtma", "version": 1, "config": cfg.to_dict(), "generator": generator.state_dict(),
            "discriminator": None, "opt_g": None, "opt_d": None, "step": 7, "epoch": 1,
            "rng": {"torch": torch.get_rng_state(), "python": [3, [1, 2, 3], None]},
            "early_stop": {"best": 0.5, "bad": 2, "history": [[1, 0.6], [2, 0.5]]}, "metrics": {"val_l1": 0.5}}


def test_round_trip_and_generator(tmp_path):
    payload = _payload()
    path = save_checkpoint(tmp_path / "sub" / "a.pt", payload)
    assert sorted(os.listdir(path.parent)) == ["a.pt"]  # no temp file left behind
    loaded = torch.load(path, weights_only=True)  # plain torch, safe mode
    assert loaded["step"] == 7 and loaded["early_stop"]["history"] == [[1, 0.6], [2, 0.5]]
    again = load_checkpoint(path)
    for key, value in payload["generator"].items():
        assert torch.equal(again["generator"][key], value), key
    generator, cfg = load_generator(path)
    assert not generator.training and cfg == Config.from_dict(TINY)
    for key, value in generator.state_dict().items():
        assert torch.equal(value, payload["generator"][key]), key
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:20, 8:20] = 1
    with torch.no_grad():
        coarse, refined = generator(image, mask)
    assert coarse.shape == refined.shape == (1, 3, 32, 32)


def test_crash_during_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, _payload(seed=0))
    before = path.read_bytes()

    real_save = torch.save

    def dying_save(obj, fh, *args, **kwargs):
        fh.write(b"PK\x03\x04 half a zip")  # some bytes reach the temp file, then the process "dies"
        raise KeyboardInterrupt("simulated kill during save")

    monkeypatch.setattr(ckpt_mod.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, _payload(seed=1))
    monkeypatch.setattr(ckpt_mod.torch, "save", real_save)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]
    assert load_checkpoint(path)["step"] == 7


def _write(path, obj):
    torch.save(obj, path)
    return path


class _Custom:  # not allowed by weights_only loading
    pass


@pytest.mark.parametrize("make, reason", [
    pytest.param(lambda p: p, "not found", id="missing"),
    pytest.param(lambda p: (p.write_bytes(b"\x00garbage" * 10), p)[1], "not a readable mhtma checkpoint",
                 id="random-bytes"),
    pytest.param(lambda p: (p.write_bytes(pickle.dumps({"format": "mhtma"})), p)[1],
                 "not a readable mhtma checkpoint", id="plain-pickle",
                 marks=pytest.mark.filterwarnings("ignore:Detected pickle protocol")),
    pytest.param(lambda p: _write(p, {"format": "mhtma", "x": _Custom()}), "not a readable mhtma checkpoint",
                 id="unsafe-object"),
    pytest.param(lambda p: _write(p, {"state_dict": {}}), "not an mhtma checkpoint", id="foreign-dict"),
    pytest.param(lambda p: _write(p, [1, 2]), "not an mhtma checkpoint", id="not-a-dict"),
    pytest.param(lambda p: _write(p, {**_payload(), "version": 99}), "version 99", id="version"),
    pytest.param(lambda p: _write(p, {k: v for k, v in _payload().items() if k != "config"}), "missing ['config']",
                 id="incomplete"),
])
def test_bad_files_raise_checkpoint_error(tmp_path, make, reason):
    path = make(tmp_path / "x.pt")
    with pytest.raises(CheckpointError) as info:
        load_generator(path)
    assert reason in str(info.value) and str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_state_dict_mismatch(tmp_path):
    wide = Config.from_dict({**TINY, "model": {"base_channels": 8, "backend": "torch"}})
    payload = _payload()
    payload["config"] = wide.to_dict()  # weights of a base-4 generator, config says base 8
    path = save_checkpoint(tmp_path / "m.pt", payload)
    with pytest.raises(CheckpointError, match="do not match the network its config describes"):
        load_generator(path)
    payload["config"] = {"model": {"attention": "bogus"}}
    path = save_checkpoint(tmp_path / "c.pt", payload)
    with pytest.raises(CheckpointError, match="config is not valid"):
        load_generator(path)


def test_save_refuses_a_non_mhtma_payload(tmp_path):
    with pytest.raises(CheckpointError, match="not an mhtma checkpoint"):
        save_checkpoint(tmp_path / "a.pt", {"generator": {}})
    assert not (tmp_path / "a.pt").exists()
