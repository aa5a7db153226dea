"""The one weights-file rule (mhtma_model.weights_files) as each of its four users applies it: the named file,
else the environment variable's, else none (skipped, or an error naming the variable); a named file that is
not there is an error naming the file, where it came from and how to get one."""
import re

import pytest
import torch

from mhtma_model import fid, losses, lpips_metric, sketch
from mhtma_model.weights_files import load_weights_file, resolve_weights_file

#: (resolver, its environment variable, a word of its how-to, whether having no file at all is an error)
USERS = [
    pytest.param(fid.resolve_inception_path, fid.INCEPTION_ENV, "inception_v3", False, id="fid-inception"),
    pytest.param(lpips_metric.resolve_backbone_path, lpips_metric.LPIPS_ENV, "alexnet", False, id="lpips-backbone"),
    pytest.param(losses.resolve_vgg16_path, losses.VGG16_ENV, "VGG16_Weights", True, id="vgg16-loss"),
    pytest.param(sketch.resolve_edge_weights, sketch.EDGE_WEIGHTS_ENV, "EdgeNet", True, id="edge-detector"),
]


@pytest.mark.parametrize("resolve, env, how, required", USERS)
def test_option_first_then_environment(resolve, env, how, required, tmp_path, monkeypatch):
    given, from_env = tmp_path / "given.pt", tmp_path / "env.pt"
    given.write_bytes(b"x")
    from_env.write_bytes(b"x")
    monkeypatch.setenv(env, str(from_env))
    assert resolve(given) == given
    assert resolve(str(given)) == given
    assert resolve(None) == from_env
    assert resolve("") == from_env  # an empty option is an unset one


@pytest.mark.parametrize("resolve, env, how, required", USERS)
def test_nothing_given_is_skipped_or_names_the_variable(resolve, env, how, required, monkeypatch):
    monkeypatch.delenv(env, raising=False)
    if not required:
        assert resolve(None) is None
        return
    with pytest.raises(FileNotFoundError, match=re.escape(env)) as info:
        resolve(None)
    assert how in str(info.value)


@pytest.mark.parametrize("resolve, env, how, required", USERS)
def test_a_named_missing_file_names_itself_and_how_to_get_one(resolve, env, how, required, tmp_path, monkeypatch):
    missing = tmp_path / "nowhere" / "weights.pt"
    monkeypatch.delenv(env, raising=False)
    with pytest.raises(FileNotFoundError) as info:
        resolve(missing)
    assert str(missing) in str(info.value) and how in str(info.value)
    monkeypatch.setenv(env, str(missing))
    with pytest.raises(FileNotFoundError) as info:
        resolve(None)
    assert str(missing) in str(info.value) and how in str(info.value) and env in str(info.value)


def test_the_source_is_named_in_the_message(tmp_path, monkeypatch):
    missing = tmp_path / "w.pt"
    def message(file, source):
        return f"{file} from {source}"
    monkeypatch.setenv("MHTMA_TEST_WEIGHTS", str(missing))
    with pytest.raises(FileNotFoundError, match=re.escape(f"{missing} from $MHTMA_TEST_WEIGHTS")):
        resolve_weights_file(None, "MHTMA_TEST_WEIGHTS", option="--w", not_found=message)
    with pytest.raises(FileNotFoundError, match=re.escape(f"{missing} from --w")):
        resolve_weights_file(missing, "MHTMA_TEST_WEIGHTS", option="--w", not_found=message)
    with pytest.raises(FileNotFoundError, match="from the variable"):
        resolve_weights_file(None, "MHTMA_TEST_WEIGHTS", option="--w", not_found=message, env_source="the variable")


def test_home_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "w.pt").write_bytes(b"x")
    assert resolve_weights_file("~/w.pt", "MHTMA_TEST_WEIGHTS", option="--w",
                                not_found=lambda f, s: "unused") == tmp_path / "w.pt"


def test_load_weights_file(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(2)}, good)
    assert torch.equal(load_weights_file(good, "test weights file", "make one")["w"], torch.ones(2))
    with pytest.raises(FileNotFoundError, match=re.escape(f"test weights file not found: {tmp_path / 'no.pt'}; make one")):
        load_weights_file(tmp_path / "no.pt", "test weights file", "make one")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="junk.pt is not a readable torch state dict"):
        load_weights_file(junk, "test weights file", "make one")
