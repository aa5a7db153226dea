"""The README's promises that a new user acts on: what the demo model is (next to the quickstart), what real
results need, and that the settings it quotes are the ones the packaged configs hold."""
import re
from pathlib import Path

import pytest

from mhtma_model.config import load_config, packaged_config_names

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


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
