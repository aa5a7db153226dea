"""mhtma-ui: input handling, the inference function with a real tiny checkpoint, the CLI, and the real page
driven in headless Chromium (skipped with a reason when Gradio, Selenium or the browser is missing)."""
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mhtma_model.cli import ui
from tests.tiny_checkpoint import make_tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]


def rgb(h=64, w=80, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def layer(h, w, box=None):
    """A transparent RGBA editor layer with an opaque painted rectangle ``box = (y0, y1, x0, x1)``."""
    arr = np.zeros((h, w, 4), np.uint8)
    if box is not None:
        y0, y1, x0, x1 = box
        arr[y0:y1, x0:x1] = (255, 255, 255, 255)
    return Image.fromarray(arr, "RGBA")


def editor_value(image, hole_box=None, sketch_box=None):
    h, w = image.size[1], image.size[0]
    return {"background": image, "layers": [layer(h, w, hole_box), layer(h, w, sketch_box)], "composite": image}


# ------------------------------------------------------------------------------------ collect_inputs
def test_painted_hole_and_sketch_layers():
    img = rgb()
    image, mask, sketch = ui.collect_inputs(editor_value(img, (10, 30, 20, 50), (18, 22, 22, 48)))
    assert image.mode == "RGB" and np.array_equal(np.asarray(image), np.asarray(img))
    m = np.asarray(mask) > 0
    assert mask.size == img.size and m.sum() == 20 * 30 and m[10:30, 20:50].all()
    s = np.asarray(sketch) > 0
    # The 4-px-wide painted line becomes a one-pixel line along row ~20.
    assert 20 <= s.sum() <= 30 and set(np.nonzero(s)[0]) <= {19, 20, 21}


def test_uploaded_mask_and_sketch_files_are_added(tmp_path):
    img = rgb()
    mask_arr = np.zeros((32, 40), np.uint8)  # half resolution: resized (nearest) to the image
    mask_arr[:8, :10] = 255
    Image.fromarray(mask_arr).save(tmp_path / "mask.png")
    drawing = np.full((64, 80, 3), 250, np.uint8)
    drawing[40:44, 10:70] = 0  # dark line on a light background
    Image.fromarray(drawing).save(tmp_path / "sketch.jpg", quality=95)
    image, mask, sketch = ui.collect_inputs(editor_value(img, (40, 50, 60, 70)), str(tmp_path / "mask.png"),
                                            str(tmp_path / "sketch.jpg"))
    m = np.asarray(mask) > 0
    assert m[:16, :20].all() and m[40:50, 60:70].all() and m.sum() == 16 * 20 + 10 * 10
    s = np.asarray(sketch) > 0
    assert s[38:46, 12:68].any(axis=0).all() and s[:36].sum() == 0


@pytest.mark.parametrize("mode", ["red-on-black", "transparent-layer"])
def test_uploaded_mask_follows_the_project_mask_rule(tmp_path, mode):
    """A mask file is read like mhtma-inpaint reads it (images.mask_from_image): a red stroke on black and
    an opaque stroke on a transparent layer both mark holes."""
    if mode == "red-on-black":
        arr = np.zeros((64, 80, 3), np.uint8)
        arr[5:15, 6:26] = (255, 0, 0)
    else:
        arr = np.zeros((64, 80, 4), np.uint8)
        arr[5:15, 6:26] = (0, 0, 0, 255)  # black paint, opaque, on a transparent layer
    Image.fromarray(arr).save(tmp_path / "mask.png")
    _, mask, _ = ui.collect_inputs(editor_value(rgb()), str(tmp_path / "mask.png"))
    m = np.asarray(mask) > 0
    assert m[5:15, 6:26].all() and m.sum() == 10 * 20


def test_uploaded_files_follow_their_exif_orientation(tmp_path):
    """A mask file stored sideways with an EXIF orientation tag is read upright, as mhtma-inpaint reads it."""
    from mhtma_model.images import mask_from_image, open_image

    stored = np.zeros((80, 64), np.uint8)  # stored 64 wide x 80 high; upright (rotated 90°) it is 80 x 64
    stored[0:20, 0:10] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    Image.fromarray(stored).save(tmp_path / "mask.png", exif=exif)
    upright = mask_from_image(open_image(tmp_path / "mask.png"))
    assert upright.shape == (64, 80)
    _, mask, _ = ui.collect_inputs(editor_value(rgb()), str(tmp_path / "mask.png"))
    np.testing.assert_array_equal(np.asarray(mask) > 0, upright)


def test_transparent_background_is_flattened_on_white():
    arr = np.zeros((32, 32, 4), np.uint8)
    arr[..., 0] = 200
    arr[:, 16:, 3] = 255  # left half transparent
    image, _, sketch = ui.collect_inputs(editor_value(Image.fromarray(arr, "RGBA"), (0, 8, 0, 8)))
    out = np.asarray(image)
    assert image.mode == "RGB" and (out[:, :16] == 255).all() and (out[:, 16:] == (200, 0, 0)).all()
    assert sketch is None


def _save_text(tmp_path):
    path = tmp_path / "holiday.png"
    path.write_text("this is not a picture")
    return str(path)


def _save_huge_header(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("L", (ui.MAX_SIDE + 1, 16)).save(path)
    return str(path)


@pytest.mark.parametrize(
    "make_args, match",
    [
        pytest.param(lambda p: (None,), "upload an image", id="no-image"),
        pytest.param(lambda p: (editor_value(rgb()),), "No hole", id="no-hole"),
        pytest.param(lambda p: (editor_value(rgb(), (0, 64, 0, 80)),), "whole image", id="all-hole"),
        pytest.param(lambda p: (editor_value(Image.new("RGB", (ui.MAX_SIDE + 8, 16)), (0, 4, 0, 4)),),
                     f"at most {ui.MAX_SIDE}", id="huge-image"),
        pytest.param(lambda p: (editor_value(rgb(8, 64), (0, 4, 0, 4)),), "at least", id="tiny-image"),
        pytest.param(lambda p: (editor_value(rgb()), _save_text(p)), "holiday.png.*not a readable image",
                     id="mask-not-an-image"),
        pytest.param(lambda p: (editor_value(rgb()), _save_huge_header(p)), f"at most {ui.MAX_SIDE}",
                     id="mask-huge"),
        pytest.param(lambda p: (editor_value(rgb(), (0, 8, 0, 8)), None, _save_text(p)), "not a readable image",
                     id="sketch-not-an-image"),
    ],
)
def test_bad_uploads_give_a_message(tmp_path, make_args, match):
    with pytest.raises(ui.UploadError, match=match):
        ui.collect_inputs(*make_args(tmp_path))


# ----------------------------------------------------------------------------------- temperatures, CLI
def test_temperature_report():
    torch = pytest.importorskip("torch")

    class Holder:
        last_temperature = torch.tensor([[12.5, 0.25]])

    temps = ui.head_temperatures(Holder())
    assert temps == {"head 1": 12.5, "head 2": 0.25}
    text = ui.temperature_markdown(temps)
    assert "| head 1 | 12.5 |" in text and "| head 2 | 0.25 |" in text
    assert "no learned temperature" in ui.temperature_markdown(ui.head_temperatures(object()))


@pytest.mark.parametrize(
    "argv, match",
    [
        pytest.param([], "no checkpoint given", id="no-checkpoint"),
        pytest.param(["--checkpoint", "/nonexistent/best.pt"], "checkpoint not found: /nonexistent/best.pt",
                     id="missing-file"),
    ],
)
def test_cli_refuses_without_a_checkpoint(argv, match, capsys):
    assert ui.main(argv) == 2
    assert match in capsys.readouterr().err


# ------------------------------------------------------------------------------- headless browser test
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,1000"]


def find_browser():
    """(chromium binary, chromedriver) paths, or a skip reason."""
    browser = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                   None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        return None, None, ("no headless browser: install Debian's chromium and chromium-driver "
                            "(apt-get install -y chromium chromium-driver)")
    return browser, driver, None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drive_page(url, image_path, mask_path, profile_dir, screenshot=None, timeout=120, too_big_path=None):
    """Open the page in headless Chromium, upload an image, paint a brush stroke on the hole layer, upload a
    mask file, press Inpaint; return the texts of the status and temperature panels and the result's src.
    With ``too_big_path``: then reload, do the same with that (oversized) image and return the page text."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser, driver_path, reason = find_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile_dir}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    drv = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        wait = WebDriverWait(drv, timeout)
        drv.get(url)
        upload = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#editor input[type=file]"))[0]
        upload.send_keys(str(image_path))
        canvas = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#editor canvas"))[0]
        time.sleep(2)  # the editor draws the uploaded background
        # The brush: one stroke across the middle of the image on the (selected) layer "hole".
        ActionChains(drv).move_to_element_with_offset(canvas, -30, -30).click_and_hold() \
            .move_by_offset(20, 10).move_by_offset(20, 10).move_by_offset(20, 10).release().perform()
        time.sleep(1)
        drv.find_element(By.CSS_SELECTOR, "#uploads .label-wrap, #uploads button").click()
        mask_input = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#mask-file input[type=file]"))[0]
        mask_input.send_keys(str(mask_path))
        wait.until(lambda d: "mask" in d.find_element(By.CSS_SELECTOR, "#mask-file").text)
        drv.find_element(By.CSS_SELECTOR, "#run").click()
        result = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#result img"))[0]
        wait.until(lambda d: "Done" in d.find_element(By.CSS_SELECTOR, "#status").text)
        info = {
            "status": drv.find_element(By.CSS_SELECTOR, "#status").text,
            "temperatures": drv.find_element(By.CSS_SELECTOR, "#temperatures").text,
            "result_src": result.get_attribute("src"),
            "download_visible": drv.find_element(By.CSS_SELECTOR, "#download").is_displayed(),
        }
        info["requested_urls"] = requested_urls(drv)
        if screenshot is not None:
            drv.execute_script("window.scrollTo(0, 0);")
            time.sleep(0.5)
            drv.save_screenshot(str(screenshot))
        if too_big_path is not None:
            drv.get(url)
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#editor input[type=file]"))[0] \
                .send_keys(str(too_big_path))
            time.sleep(2)
            drv.find_element(By.CSS_SELECTOR, "#uploads .label-wrap, #uploads button").click()
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#mask-file input[type=file]"))[0] \
                .send_keys(str(mask_path))
            wait.until(lambda d: "mask" in d.find_element(By.CSS_SELECTOR, "#mask-file").text)
            drv.find_element(By.CSS_SELECTOR, "#run").click()
            wait.until(lambda d: "largest side" in d.find_element(By.TAG_NAME, "body").text)
            info["too_big_text"] = drv.find_element(By.TAG_NAME, "body").text
        return info
    finally:
        drv.quit()


def requested_urls(drv):
    """URLs of every network request the page made (from Chromium's performance log)."""
    import json

    urls = set()
    for entry in drv.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.add(message["params"]["request"]["url"])
    return urls


def shrink_screenshot(src, dst, width=960):
    """Downscale and palette-quantise a screenshot so that it stays small in the repository."""
    img = Image.open(src).convert("RGB")
    img = img.resize((width, round(img.size[1] * width / img.size[0])), Image.LANCZOS)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    img.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(dst, optimize=True)


# ------------------------------------------------------------------ real tiny checkpoints (train, model-parts)
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {"plain": make_tiny_checkpoint(root / "plain.pt", sketch=False),
            "sketch": make_tiny_checkpoint(root / "sketch.pt", sketch=True)}


def hole_case(h=48, w=56):
    image = rgb(h, w, seed=3)
    mask = np.zeros((h, w), np.uint8)
    mask[10:30, 12:40] = 255
    sketch = np.zeros((h, w), np.uint8)
    sketch[20, 12:40] = 255
    return image, Image.fromarray(mask, "L"), Image.fromarray(sketch, "L")


@pytest.mark.parametrize("kind", ["plain", "sketch"])
@pytest.mark.parametrize("with_sketch", [False, True], ids=["no-lines", "lines"])
def test_run_inpainting_with_a_real_checkpoint(checkpoints, kind, with_sketch):
    inpainter = ui.InpainterCache("cpu").get(checkpoints[kind])
    image, mask, sketch = hole_case()
    if with_sketch and kind == "plain":
        with pytest.raises(ValueError, match="without sketches"):
            ui.run_inpainting(inpainter, image, mask, sketch)
        return
    result, temps = ui.run_inpainting(inpainter, image, mask, sketch if with_sketch else None)
    assert isinstance(result, Image.Image) and result.size == image.size and result.mode == "RGB"
    out, inp, hole = np.asarray(result), np.asarray(image), np.asarray(mask) > 0
    assert np.array_equal(out[~hole], inp[~hole])  # known pixels bit-identical
    assert not np.array_equal(out[hole], inp[hole])
    # Learned temperature, one per head (default 2 heads), positive.
    assert list(temps) == ["head 1", "head 2"] and all(t > 0 for t in temps.values())


def test_sketch_reaches_the_generator_as_fifth_channel(checkpoints):
    """The lines given to run_inpainting arrive as the coarse network's 5th input channel (sketch * mask)."""
    inpainter = ui.InpainterCache("cpu").get(checkpoints["sketch"])
    image, mask, sketch = hole_case()
    seen = []
    handle = inpainter.generator.coarse.register_forward_pre_hook(
        lambda module, args: seen.append(args[0][0, 4].clone()))
    try:
        ui.run_inpainting(inpainter, image, mask, sketch)
        ui.run_inpainting(inpainter, image, mask, None)
    finally:
        handle.remove()
    lines, empty = (t.numpy()[:48, :56] for t in seen)
    expected = (np.asarray(sketch) > 0) & (np.asarray(mask) > 0)
    assert np.array_equal(lines > 0.5, expected)
    assert empty.max() == 0


def test_run_inpainting_rejects_mismatched_sizes(checkpoints):
    inpainter = ui.InpainterCache("cpu").get(checkpoints["plain"])
    image, mask, _ = hole_case()
    with pytest.raises(ValueError, match="mask size"):
        ui.run_inpainting(inpainter, image, mask.resize((10, 10)))
    with pytest.raises(TypeError, match="image must be a PIL image"):
        ui.run_inpainting(inpainter, "cat.png", mask)


def test_cli_refuses_an_unusable_checkpoint(tmp_path, capsys):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    assert ui.main(["--checkpoint", str(bad)]) == 2
    assert "broken.pt" in capsys.readouterr().err


@pytest.mark.parametrize("device, match", [
    pytest.param("bogus", "device must be", id="unknown-device"),
    pytest.param("cuda", "no CUDA GPU", id="cuda-without-gpu",
                 marks=pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is present")),
])
def test_cli_refuses_an_unusable_device(checkpoints, device, match, capsys):
    assert ui.main(["--checkpoint", str(checkpoints["plain"]), "--device", device]) == 2
    assert match in capsys.readouterr().err


def test_cli_refuses_zero_threads(checkpoints, capsys):
    assert ui.main(["--checkpoint", str(checkpoints["plain"]), "--device", "cpu", "--threads", "0"]) == 2
    assert "--threads must be at least 1, got 0" in capsys.readouterr().err


def screenshot_destination(tmp_path):
    """Where the browser test saves its screenshot: ``$MHTMA_UI_SCREENSHOT`` when asked for explicitly
    (``MHTMA_UI_SCREENSHOT=docs/ui.png`` refreshes the README's picture), else a temporary folder, so that
    running the tests never modifies the checkout."""
    explicit = os.environ.get("MHTMA_UI_SCREENSHOT")
    return Path(explicit) if explicit else tmp_path / "ui.png"


def test_screenshot_goes_to_a_temporary_folder_unless_asked(tmp_path, monkeypatch):
    monkeypatch.delenv("MHTMA_UI_SCREENSHOT", raising=False)
    target = screenshot_destination(tmp_path).resolve()
    assert REPO.resolve() not in target.parents  # never inside the checkout (docs/ui.png is tracked)
    monkeypatch.setenv("MHTMA_UI_SCREENSHOT", str(tmp_path / "asked.png"))
    assert screenshot_destination(tmp_path) == tmp_path / "asked.png"


def test_page_in_headless_chromium(checkpoints, tmp_path):
    """The real page, served on a free localhost port, driven by headless Chromium: upload, brush, mask
    upload, Inpaint -> result image, download button and temperatures appear; screenshot -> a temporary
    file (or $MHTMA_UI_SCREENSHOT); then an oversized image -> a message."""
    pytest.importorskip("gradio", reason="Gradio not installed (pip install 'mhtma[ui]')")
    pytest.importorskip("selenium", reason="Selenium not installed (pip install 'mhtma[ui]')")
    _, _, reason = find_browser()
    if reason:
        pytest.skip(reason)
    from skimage import data

    image_path, mask_path = tmp_path / "cat.png", tmp_path / "mask.png"
    Image.fromarray(data.chelsea()[:256, 100:356]).save(image_path)
    mask = np.zeros((256, 256), np.uint8)
    mask[70:150, 80:160] = 255
    Image.fromarray(mask).save(mask_path)
    mask_percent = 100 * float((mask > 0).mean())
    too_big = tmp_path / "panorama.png"
    Image.new("RGB", (ui.MAX_SIDE + 100, 200), (20, 90, 160)).save(too_big)

    port = free_port()
    app = ui.build_app(checkpoints["plain"], device="cpu")
    ui.launch(app, "127.0.0.1", port, block=False)
    try:
        info = drive_page(f"http://127.0.0.1:{port}/", image_path, mask_path, tmp_path / "profile",
                          screenshot=tmp_path / "shot.png", too_big_path=too_big)
    finally:
        app.close()
    # The page loads nothing from the internet: every request goes to the local server.
    # (chrome://, data: and blob: URLs are the browser's own.)
    outside = {u for u in info["requested_urls"] if u.startswith(("http:", "https:", "ws:", "wss:"))
               and not u.startswith((f"http://127.0.0.1:{port}/", f"ws://127.0.0.1:{port}/"))}
    assert not outside, f"page requested outside URLs: {sorted(outside)[:5]}"
    assert info["result_src"] and "/file=" in info["result_src"]
    assert info["download_visible"]
    assert "head 1" in info["temperatures"] and "head 2" in info["temperatures"]
    hole_percent = float(info["status"].split("hole ")[1].split(" %")[0])
    assert hole_percent > mask_percent + 0.2  # the brush stroke added to the uploaded mask
    # An oversized upload gives a message on the page (the server keeps serving).
    assert f"{ui.MAX_SIDE + 100}x200 px; the largest side may be at most {ui.MAX_SIDE} px" in info["too_big_text"]
    target = screenshot_destination(tmp_path)
    shrink_screenshot(tmp_path / "shot.png", target)
    assert target.is_file()


# ------------------------------------------------------------------------------- the real command
@pytest.mark.parametrize("stop, said", [("SIGINT", "Ctrl+C"), ("SIGTERM", "SIGTERM")], ids=["ctrl-c", "sigterm"])
def test_cli_serves_offline_quietly_and_stops_on_ctrl_c(checkpoints, tmp_path, stop, said):
    """`python -m mhtma_model.ui` in a real process: one line with the address, the page answers, the log
    holds no share-link hint (the tool is offline) and Ctrl+C (SIGINT) or SIGTERM stops it with exit status 0
    -- even when the process starts with SIGINT ignored, as a background job of a non-interactive shell (a CI
    script) does: Python then installs no KeyboardInterrupt handler and the signal used to do nothing."""
    pytest.importorskip("gradio", reason="Gradio not installed (pip install 'mhtma[ui]')")
    import signal
    import subprocess
    import sys
    import urllib.request

    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", GRADIO_SHARE="true")  # GRADIO_SHARE must not turn a share link on
    proc = subprocess.Popen([sys.executable, "-m", "mhtma_model.ui", "--checkpoint", str(checkpoints["plain"]),
                             "--port", str(port), "--device", "cpu"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        first = proc.stdout.readline()  # blocks until the server is up (or the process ended)
        assert first.startswith("mhtma-ui: serving") and f"http://127.0.0.1:{port}" in first, first
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=60) as response:
            assert response.status == 200 and b"mhtma inpainting" in response.read()
        proc.send_signal(getattr(signal, stop))
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    log = first + rest
    assert proc.returncode == 0, log
    assert "share" not in log.lower() and "public" not in log.lower(), log
    assert "Traceback" not in log, log
    assert f"mhtma-ui: stopped ({said})" in log


def test_cli_refuses_a_port_in_use(checkpoints, capsys):
    pytest.importorskip("gradio", reason="Gradio not installed (pip install 'mhtma[ui]')")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert ui.main(["--checkpoint", str(checkpoints["plain"]), "--port", str(port), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------- the page under load
LOAD_CLIENTS, LOAD_REQUESTS = 8, 4
#: (client, request) whose mask "file" is text: it must get its message and leave the others alone.
BAD_REQUEST = (3, 2)


def _load_case(folder: Path, client: int, request: int):
    """A small image of its own size and content and a mask with its own hole -> (image, hole, paths)."""
    h, w = 16 + 4 * client, 24 + 4 * request
    rng = np.random.default_rng(100 * client + request)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    hole = np.zeros((h, w), bool)
    top, left = rng.integers(0, h // 2), rng.integers(0, w // 2)
    hole[top:top + h // 3, left:left + w // 3] = True
    image_path, mask_path = folder / f"image-{client}-{request}.png", folder / f"mask-{client}-{request}.png"
    Image.fromarray(image).save(image_path)
    if (client, request) == BAD_REQUEST:
        mask_path.write_text("this is not a picture")
    else:
        Image.fromarray(hole.astype(np.uint8) * 255).save(mask_path)
    return image, hole, image_path, mask_path


def _client_session(url: str, folder: Path, client: int, checkpoint: str) -> list:
    """One visitor: its own gradio_client.Client, LOAD_REQUESTS requests in a row -> [(request, outcome)]."""
    from gradio_client import Client, handle_file

    session = Client(url, verbose=False, analytics_enabled=False, download_files=str(folder / f"dl-{client}"))
    outcomes = []
    for request in range(LOAD_REQUESTS):
        image, hole, image_path, mask_path = _load_case(folder, client, request)
        editor = {"background": handle_file(str(image_path)), "layers": [], "composite": None}
        try:
            result = session.predict(editor, handle_file(str(mask_path)), None, checkpoint, api_name="/inpaint")
            outcomes.append((request, ("ok", image, hole, result)))
        except Exception as exc:  # gradio_client's AppError carries the page's message
            outcomes.append((request, ("error", type(exc).__name__, str(exc))))
    return outcomes


@pytest.mark.timeout(300)
def test_page_under_load_from_concurrent_clients(checkpoints, tmp_path):
    """`mhtma-ui` in a real process on loopback; 8 concurrent gradio_client visitors x 4 requests, each with
    its own image and mask: every result has the input's size, identical known pixels and a filled hole; no
    request is lost; the one bad upload gets its message; the server still answers afterwards."""
    pytest.importorskip("gradio_client", reason="gradio_client not installed (pip install 'mhtma[dev]')")
    import subprocess
    import sys
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", GRADIO_ANALYTICS_ENABLED="False")
    proc = subprocess.Popen([sys.executable, "-m", "mhtma_model.ui", "--checkpoint", str(checkpoints["plain"]),
                             "--port", str(port), "--device", "cpu", "--threads", "1"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = proc.stdout.readline()
        assert first.startswith("mhtma-ui: serving"), first
        url = f"http://127.0.0.1:{port}/"
        with ThreadPoolExecutor(LOAD_CLIENTS) as pool:
            sessions = [pool.submit(_client_session, url, tmp_path, c, str(checkpoints["plain"]))
                        for c in range(LOAD_CLIENTS)]
            outcomes = {(c, r): outcome for c, s in enumerate(sessions) for r, outcome in s.result(timeout=240)}
        assert sorted(outcomes) == [(c, r) for c in range(LOAD_CLIENTS) for r in range(LOAD_REQUESTS)]  # none lost
        for key, outcome in outcomes.items():
            if key == BAD_REQUEST:
                assert outcome[0] == "error" and "not a readable image" in outcome[2], outcome
                continue
            assert outcome[0] == "ok", (key, outcome)
            _, image, hole, (_shown, _result, download, _temps, status) = outcome
            with Image.open(download["value"]) as saved:
                out = np.asarray(saved.convert("RGB"))
            assert out.shape == image.shape and f"Done: {image.shape[1]}x{image.shape[0]} px" in status, key
            np.testing.assert_array_equal(out[~hole], image[~hole], err_msg=str(key))
            assert not np.array_equal(out[hole], image[hole]), key
        assert proc.poll() is None  # still serving
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.status == 200
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
