"""The README's promises that a new user acts on: every Python block runs as written, the quickstart's test line
is what CI runs, what the demo model is (next to the quickstart), what real results need, that the settings it
quotes are the ones the packaged configs hold, and that it stays short, with contents and links that resolve."""
import functools
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mhtma_model.config import load_config, packaged_config_names

from .tiny_checkpoint import make_tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
MAX_LINES = 250


def section(title):
    """The text of the README section ``## title`` up to the next ``## `` heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.S | re.M)
    assert match, f"README has no section '## {title}'"
    return match.group(1)


def test_quickstart_says_what_the_demo_model_is():
    quick = section("Quickstart")
    assert "What the demo model is" in quick and "flat blocks of colour" in quick
    # the measured figures of the demo model and of the classical baseline it loses to
    for figure in ("MAE 4.7 %", "PSNR 18.3 dB", "SSIM 0.818", "1.5 % / 29.6 dB / 0.924", "Telea"):
        assert figure in quick, figure
    # the description matches the demo config: width 8, 300 steps, 64 px crops of 48 images
    demo = load_config()
    assert (demo.model.base_channels, demo.train.max_steps, demo.data.size, demo.data.root) == (8, 300, 64, None)
    assert "width-8 generator trained for 300 steps" in quick and "64 px crops of 48" in quick


def test_quickstart_says_what_real_results_need():
    real = section("Quickstart").split("**For real results**")[1]
    for need in ("Your data", "CUDA GPU", "paper config", "Time"):
        assert need in real, need
    item = real.split("*A paper config*")[1].split("\n4.")[0]
    configs = set(re.findall(r"`(?:--config )?([a-z0-9_]+)`", item))
    assert {"paris_streetview", "celeba_hq", "places2"} <= configs
    assert configs <= set(packaged_config_names())
    # the quoted paper settings are what the packaged paper configs hold
    for name in ("paris_streetview", "celeba_hq", "places2"):
        cfg = load_config(name)
        assert (cfg.data.size, cfg.data.batch_size, cfg.model.base_channels, cfg.train.lr_g, cfg.train.patience) \
            == (256, 16, 24, 1e-4, 30), name
    # training time: the paper's own figures (Sec. IV-B), not a guess
    assert "6 days" in real and "7 days" in real and "10 days" in real and "two RTX 3090" in real


@pytest.mark.parametrize("text", ["no share links", "one line with the address"])
def test_web_ui_section_promises_an_offline_quiet_server(text):
    assert text in section("Web UI").replace("\n", " ")


def python_blocks() -> list:
    """``(id, code)`` of every ```python block, the id naming its section and its place there."""
    blocks, counts = [], {}
    for match in re.finditer(r"^```python\n(.*?)^```", README, re.S | re.M):
        heading = re.findall(r"^## (.+)$", README[:match.start()], re.M)[-1]
        slug = re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")
        counts[slug] = counts.get(slug, 0) + 1
        blocks.append(pytest.param(match.group(1), id=f"{slug}-{counts[slug]}"))
    return blocks


def test_the_readme_has_python_blocks_to_run():
    assert len(python_blocks()) >= 4


@pytest.fixture
def user_folder(tmp_path, monkeypatch):
    """What the README's blocks assume a reader has: the quickstart's checkpoint (a tiny real one here) and a
    photo, in the working directory."""
    make_tiny_checkpoint(tmp_path / "runs" / "demo" / "checkpoints" / "best.pt")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 72, 3), dtype=np.uint8)).save(tmp_path / "photo.jpg", quality=95)
    monkeypatch.chdir(tmp_path)
    # inductor's C++ compile takes minutes on a 2-core CPU; aot_eager captures the same graph (fullgraph included)
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    return tmp_path


@pytest.mark.parametrize("code", python_blocks())
def test_python_block_runs_as_written(code, user_folder):
    scope = {"__name__": "__readme__"}
    exec(compile(code, "README.md", "exec"), scope)
    for name in ("out", "refined"):  # what the op and the layer give back: finite, the promised shape
        if isinstance(scope.get(name), torch.Tensor):
            assert torch.isfinite(scope[name]).all()
    if "compiled" in scope:  # the compiled layer's backward reached the weights
        assert all(p.grad is not None for p in scope["layer"].temperature_net.parameters())
    if "inpainter" in scope:  # the filled photo: its size, known pixels as they were, the saved model
        photo, result = np.asarray(scope["photo"]), np.asarray(Image.open(user_folder / "filled.png"))
        assert result.shape == photo.shape
        np.testing.assert_array_equal(result[~scope["hole"]], photo[~scope["hole"]])
        assert (user_folder / "my-model" / "model.safetensors").is_file()


def test_op_and_layer_blocks_give_the_shapes_they_promise(user_folder):
    blocks = {p.id: p.values[0] for p in python_blocks()}
    scope = {}
    exec(compile(blocks["the-op-1"], "README.md", "exec"), scope)
    assert scope["out"].shape == (2, 2, 64, 288)
    exec(compile(blocks["the-attention-layer-1"], "README.md", "exec"), scope)
    assert scope["refined"].shape == scope["features"].shape and scope["attn"].last_temperature.shape == (2, 2)


def test_quickstart_is_two_lines_and_ci_runs_the_second():
    block = re.search(r"```bash\n(.*?)```", section("Quickstart"), re.S).group(1).strip().splitlines()
    assert len(block) == 2 and block[0].endswith("python -m mhtma_model.train")
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert block[1] in ci


def test_readme_is_short_with_contents_that_match_its_sections():
    assert len(README.splitlines()) <= MAX_LINES
    headings = re.findall(r"^## (.+)$", README, re.M)
    listed = re.findall(r"^- \[(.+?)\]\(#([a-z0-9-]+)\)$", section("Contents"), re.M)
    assert [title for title, _ in listed] == [h for h in headings if h != "Contents"]
    for title, anchor in listed:
        assert anchor == re.sub(r"[^a-z0-9 -]", "", title.lower()).replace(" ", "-"), title


@pytest.mark.parametrize("doc", ["README.md", "docs/usage.md", "docs/kernels.md", "docs/layout.md"])
def test_relative_links_point_at_files_that_exist(doc):
    text = (REPO / doc).read_text(encoding="utf-8")
    links = [t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", text)]
    missing = [t for t in links if t and not t.startswith("http") and not ((REPO / doc).parent / t).exists()]
    assert links and not missing
