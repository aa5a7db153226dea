"""`mhtma-ui`: a local web page for interactive (optionally sketch-guided) inpainting with a trained generator.

A person loads an image into an editor with two layers, paints the hole on the layer "hole" and,
optionally, guide lines on the layer "sketch" (or uploads a mask / sketch file instead), picks a
checkpoint and gets the inpainted result next to the input, a download button, and the temperature
``t_h`` that each attention head chose for this image (``generator.last_temperature`` after the forward).

The inference itself is :func:`run_inpainting`, which calls a :class:`mhtma_model.Inpainter` (the one copy
of padding and compositing is :mod:`mhtma_model.inference`) and reads the temperatures; the page only collects
inputs.

Concurrency: Gradio queues the requests of all visitors; :data:`CONCURRENCY` (1) of them run at a time
(one forward at a time: the network already uses every thread it was given, and the Inpainter's lock keeps
the per-head temperatures of a result its own), and at most :data:`QUEUE_SIZE` wait; beyond that a visitor
gets Gradio's "queue is full" message and can retry. A bad upload fails only its own request.
Gradio is an optional dependency (``pip install 'mhtma[ui]'``); nothing here contacts the internet
(analytics off, no share links, fonts served locally).
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from .options import add_inference_options, apply_inference_options
from ..image_modes import save_image
from ..images import UNREADABLE_HINT, UnreadableImageError, mask_from_image, open_image, to_rgb
from ..inference import check_pinned_backend
from ..inpainter import WEIGHTS_NAME, Inpainter
from ..sketch import load_user_sketch, skeleton

#: Largest accepted side of an uploaded image, in pixels.
MAX_SIDE = 4096
#: Smallest accepted side (the generator works on multiples of 8).
MIN_SIDE = 16
#: Largest accepted upload, passed to Gradio.
MAX_FILE_SIZE = "64mb"
#: Names of the editor's two layers, in order.
LAYER_NAMES = ("hole", "sketch")
#: Requests that run at the same time (module docstring, "Concurrency").
CONCURRENCY = 1
#: Requests that may wait in the queue; more are refused with a message.
QUEUE_SIZE = 64


class UploadError(ValueError):
    """A user-facing problem with an upload (shown on the page as a message, never a crash)."""


# ------------------------------------------------------------------------------------ input handling
def check_size(image: Image.Image, name: str) -> Image.Image:
    """Raise UploadError unless ``MIN_SIDE <= width, height <= MAX_SIDE``."""
    width, height = image.size
    if max(width, height) > MAX_SIDE:
        raise UploadError(f"{name} is {width}x{height} px; the largest side may be at most {MAX_SIDE} px. "
                          "Please scale it down and upload it again.")
    if min(width, height) < MIN_SIDE:
        raise UploadError(f"{name} is {width}x{height} px; each side must be at least {MIN_SIDE} px.")
    return image


def open_image_file(path: str | os.PathLike, name: str) -> Image.Image:
    """Decode an uploaded file with :func:`mhtma_model.images.open_image` (EXIF orientation applied; the
    size is checked from the header before decoding) -> PIL image, or UploadError saying why not."""
    path = Path(path)
    try:
        return open_image(path, check_header=lambda img: check_size(img, name))
    except UnreadableImageError as exc:
        if isinstance(exc.__cause__, Image.DecompressionBombError):
            raise UploadError(f"{name} ({path.name}) is too large to open: {exc.__cause__}") from exc
        raise UploadError(f"{name} ({path.name}) is not a readable image file; {UNREADABLE_HINT}.") from exc


def _as_pil(value: Any, name: str) -> Optional[Image.Image]:
    if value is None:
        return None
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, np.ndarray):
        return Image.fromarray(value)
    if isinstance(value, (str, os.PathLike)):
        return open_image_file(value, name)
    raise UploadError(f"{name}: unexpected value of type {type(value).__name__}")


def _painted(layer: Optional[Image.Image], size: tuple[int, int]) -> Optional[np.ndarray]:
    """Pixels painted on an editor layer (alpha > 0) -> bool [H, W] at ``size = (W, H)``, None if empty."""
    if layer is None:
        return None
    rgba = layer.convert("RGBA")
    if rgba.size != size:
        rgba = rgba.resize(size, Image.NEAREST)
    painted = np.asarray(rgba)[..., 3] > 0
    return painted if painted.any() else None


def _page_image(editor: Optional[dict], image_file: Any) -> Image.Image:
    """The picture to inpaint: the uploaded ``image_file`` in its own mode (with its EXIF and ICC profile),
    else the editor's background as RGB (transparency on white, like every image the project reads)."""
    background = None if not editor or editor.get("background") is None else _as_pil(editor["background"],
                                                                                        "the image")
    if image_file is None:
        if background is None:
            raise UploadError("Please upload an image first.")
        return to_rgb(check_size(background, "the image"))
    image = check_size(_as_pil(image_file, "the image file"), "the image file")
    if background is not None and background.size != image.size:
        raise UploadError(f"the image file is {image.size[0]}x{image.size[1]} px but the picture in the editor is "
                          f"{background.size[0]}x{background.size[1]} px: load the same picture in both.")
    return image


def collect_inputs(editor: Optional[dict], mask_file: Any = None, sketch_file: Any = None, image_file: Any = None
                   ) -> tuple[Image.Image, Image.Image, Optional[Image.Image]]:
    """Turn what the page collected into ``(image, mask L, sketch L or None)``, all the image's size.

    ``editor``: Gradio ImageEditor value ``{"background", "layers", "composite"}``; layer 0 = hole,
    layer 1 = sketch (painted pixels, any colour). ``image_file``: optional, the picture as a file: it is
    the image then, in its own mode, bit depth, EXIF and ICC profile (the editor's copy is 8-bit RGBA);
    else the image is the editor's background as RGB. ``mask_file``: optional image, holes by the
    project's rule (:func:`mhtma_model.images.mask_from_image`: value > 127, brightest channel for colour,
    alpha for a transparent layer), added to the painted hole. ``sketch_file``: optional drawing, read
    with :func:`mhtma_model.sketch.load_user_sketch` (dark or light strokes on any background), added to
    the painted lines. Returned mask and sketch are 0/255 'L' images; UploadError on anything unusable.
    """
    image = _page_image(editor, image_file)
    size = image.size
    layers = [_as_pil(layer, "a layer") for layer in ((editor or {}).get("layers") or [])]

    hole = _painted(layers[0], size) if layers else None
    if mask_file is not None:
        mask_img = _as_pil(mask_file, "the mask file")
        check_size(mask_img, "the mask file")
        uploaded = Image.fromarray(mask_from_image(mask_img)).resize(size, Image.NEAREST)
        uploaded = np.asarray(uploaded)
        hole = uploaded if hole is None else (hole | uploaded)
    if hole is None or not hole.any():
        raise UploadError("No hole: paint the region to fill on the layer 'hole' (or upload a mask file, "
                          "white = hole).")
    if hole.all():
        raise UploadError("The hole covers the whole image; leave some of the image visible.")

    strokes = _painted(layers[1], size) if len(layers) > 1 else None
    if sketch_file is not None:
        sketch_img = _as_pil(sketch_file, "the sketch file")
        check_size(sketch_img, "the sketch file")
        uploaded = load_user_sketch(sketch_img, (size[1], size[0])) > 0
        strokes = uploaded if strokes is None else (strokes | uploaded)
    if strokes is not None:
        strokes = skeleton(strokes)  # one-pixel lines, like a sketch file

    mask = Image.fromarray(hole.astype(np.uint8) * 255, "L")
    sketch = None if strokes is None or not strokes.any() else Image.fromarray(strokes.astype(np.uint8) * 255, "L")
    return image, mask, sketch


# ------------------------------------------------------------------------------------------ inference
def head_temperatures(generator) -> dict[str, float]:
    """``generator.last_temperature`` ([1, heads] after a single-image forward) -> {"head 1": t1, ...}."""
    temp = getattr(generator, "last_temperature", None)
    if temp is None:
        return {}
    values = np.asarray(temp.detach().float().cpu()).reshape(-1)
    return {f"head {i + 1}": float(v) for i, v in enumerate(values)}


def run_inpainting(inpainter: Inpainter, image: Image.Image, mask: Image.Image,
                   sketch: Optional[Image.Image] = None) -> tuple[Image.Image, dict[str, float]]:
    """Inpaint one image and report each head's temperature.

    ``image``: PIL RGB; ``mask``: PIL, white = hole, same size; ``sketch``: PIL 'L' lines (white = line)
    or None. Returns ``(inpainter(image, mask, sketch), {"head k": t_k})``: known pixels unchanged,
    temperatures from ``generator.last_temperature`` after that forward (read under the inpainter's lock, so
    they belong to this image). Errors of the inpainter (ValueError/TypeError: sizes differ, a sketch for a
    model trained without sketches, ...) propagate with its message.
    """
    with inpainter.lock:
        result = inpainter(image, mask, sketch)
        return result, head_temperatures(inpainter.generator)


def save_download(result: Image.Image, folder: Path, number: int) -> tuple[Path, Optional[str]]:
    """Write the result the download button hands out: ``folder/inpainted-NNNN.png`` in the result's mode,
    bit depth, EXIF and ICC profile where PNG holds them (:func:`mhtma_model.image_modes.save_image`)
    -> (path, None or the one line saying how it was converted)."""
    path = Path(folder) / f"inpainted-{number:04d}.png"
    return path, save_image(result, path)


def temperature_markdown(temps: dict[str, float]) -> str:
    """Markdown table of the per-head temperatures (or a note when the model has none)."""
    if not temps:
        return "This generator has no learned temperature (fixed-t, ATMA-free or contextual attention)."
    rows = "\n".join(f"| {name} | {value:.4g} |" for name, value in temps.items())
    return "**Temperature per attention head for this image**\n\n| head | t |\n|---|---|\n" + rows


class InpainterCache:
    """:meth:`mhtma_model.Inpainter.load` (a checkpoint or a save_pretrained folder) once per (path, mtime),
    on one device and precision."""

    def __init__(self, device="cpu", precision: str = "auto", compile: bool = False):
        self.device, self.precision, self.compile = device, precision, compile
        self._cache: dict[tuple[str, float], Inpainter] = {}
        self._lock = threading.Lock()

    def get(self, path: str | os.PathLike) -> Inpainter:
        resolved = Path(str(path)).expanduser()
        if not str(path).strip() or not resolved.exists():
            raise UploadError(f"checkpoint not found: {resolved}")
        stamp = resolved / WEIGHTS_NAME if resolved.is_dir() else resolved  # a save_pretrained folder: its weights
        key = (str(resolved.resolve()), stamp.stat().st_mtime if stamp.exists() else 0.0)
        with self._lock:
            if key not in self._cache:
                try:
                    inpainter = Inpainter.load(resolved, self.device, self.precision, self.compile)
                    check_pinned_backend(inpainter.generator, inpainter.device, self.precision)
                except ValueError as exc:
                    raise UploadError(str(exc)) from exc  # it names the checkpoint and the problem
                self._cache.clear()  # keep one model in memory
                self._cache[key] = inpainter
            return self._cache[key]


def checkpoint_choices(checkpoint: str | os.PathLike) -> list[str]:
    """The given checkpoint first, then the other ``*.pt`` files next to it (e.g. best.pt / last.pt)."""
    first = str(Path(checkpoint).expanduser())
    others = sorted(str(p) for p in Path(first).parent.glob("*.pt") if str(p) != first)
    return [first] + others


# ------------------------------------------------------------------------------------------ the page
def _import_gradio():
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: no usage reports
    try:
        import gradio as gr
    except ImportError as exc:
        raise ImportError("mhtma-ui needs Gradio: pip install 'mhtma[ui]' (or pip install gradio)") from exc
    return gr


def build_app(checkpoint: str | os.PathLike, device: str = "cpu", cache: Optional[InpainterCache] = None):
    """The Gradio page (``gr.Blocks``), with ``checkpoint`` preselected; requests queued as the module
    docstring says ("Concurrency")."""
    gr = _import_gradio()
    cache = cache or InpainterCache(device)
    out_dir = Path(tempfile.mkdtemp(prefix="mhtma-ui-"))
    numbers = itertools.count(1)

    def on_run(editor, mask_file, sketch_file, ckpt, image_file=None):
        try:
            image, mask, sketch = collect_inputs(editor, mask_file, sketch_file, image_file)
            result, temps = run_inpainting(cache.get(ckpt), image, mask, sketch)
            path, converted = save_download(result, out_dir, next(numbers))
        except (UploadError, ValueError, TypeError) as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        shown = np.array(to_rgb(image))
        shown[np.asarray(mask) > 0] = 255
        note = f"Done: {image.size[0]}x{image.size[1]} px, hole {100 * float(np.mean(np.asarray(mask) > 0)):.1f} %"
        note += ", sketch-guided." if sketch is not None else "."
        note += f" Download: {converted}." if converted else ""
        return Image.fromarray(shown), to_rgb(result), gr.DownloadButton(value=str(path), visible=True), \
            temperature_markdown(temps), note

    with gr.Blocks(title="mhtma inpainting") as app:
        gr.Markdown(
            "## MHTMA inpainting\n"
            "1. Upload an image (at most " f"{MAX_SIDE}x{MAX_SIDE} px). "
            "2. With the brush, paint the region to fill on the layer **hole**. "
            "3. Optionally switch to the layer **sketch** and draw thin guide lines inside the hole "
            "(sketch-guided checkpoints only). 4. Press **Inpaint**.")
        with gr.Row():
            with gr.Column():
                editor = gr.ImageEditor(
                    label="Image: paint the hole (layer 'hole'), guide lines (layer 'sketch')",
                    type="pil", image_mode="RGBA", format="png", sources=("upload", "clipboard"),
                    layers=gr.LayerOptions(allow_additional_layers=False, layers=list(LAYER_NAMES)),
                    brush=gr.Brush(default_size=24, colors=["#ffffff", "#ff0000", "#000000"],
                                   default_color="#ffffff", color_mode="defaults"),
                    transforms=(), elem_id="editor")
                with gr.Accordion("Or upload a mask / sketch file, or the image as a file", open=False,
                                  elem_id="uploads"):
                    image_file = gr.File(label="Image file (optional: the download keeps its mode, bit depth, "
                                         "EXIF and colour profile; paint on the same picture above)",
                                         file_types=["image"], type="filepath", elem_id="image-file")
                    mask_file = gr.File(label="Mask (white = hole)", file_types=["image"], type="filepath",
                                        elem_id="mask-file")
                    sketch_file = gr.File(label="Sketch (dark or light lines on a plain background)",
                                          file_types=["image"], type="filepath", elem_id="sketch-file")
                ckpt = gr.Dropdown(choices=checkpoint_choices(checkpoint), value=str(Path(checkpoint).expanduser()),
                                   allow_custom_value=True, label="Checkpoint", elem_id="checkpoint")
                run_btn = gr.Button("Inpaint", variant="primary", elem_id="run")
            with gr.Column():
                with gr.Row():
                    shown = gr.Image(label="Input with hole", type="pil", interactive=False, elem_id="masked",
                                     buttons=["download", "fullscreen"])
                    output = gr.Image(label="Result", type="pil", interactive=False, format="png", elem_id="result",
                                      buttons=["download", "fullscreen"])
                download = gr.DownloadButton("Download result (PNG)", visible=False, elem_id="download")
                status = gr.Markdown(elem_id="status")
                temps = gr.Markdown(elem_id="temperatures")
        run_btn.click(on_run, inputs=[editor, mask_file, sketch_file, ckpt, image_file],
                      outputs=[shown, output, download, temps, status], api_name="inpaint")
    return app.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)


def launch(app, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Serve ``app`` locally (no share link, analytics off). ``block=False`` returns once serving.

    Gradio runs quietly: its start-up lines (including the hint "To create a public link, set share=True",
    which does not apply to an offline tool) are not printed; :func:`main` prints its own one-line address.
    A port that is taken raises OSError.
    """
    app.launch(server_name=host, server_port=port, share=False, inbrowser=False, show_error=True,
               ssr_mode=False, max_file_size=MAX_FILE_SIZE, prevent_thread_lock=True, quiet=True,
               footer_links=[])
    if block:
        serve_until_interrupted(app)
    return app


#: Signals that stop the server: Ctrl+C and a service manager's stop.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_signals():
    """While inside (main thread only), SIGINT and SIGTERM append their number to the yielded list instead of
    raising. Installing handlers also undoes an inherited "ignore SIGINT" (a background job of a
    non-interactive shell starts that way), so Ctrl+C / ``kill -INT`` always stops the server."""
    received: list[int] = []
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in STOP_SIGNALS}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def serve_until_interrupted(app, received: Optional[list] = None) -> None:
    """Block until SIGINT/SIGTERM (recorded in ``received`` by :func:`stop_signals`, installed here when not
    given) or until the server stops, then close the server with one line of output."""
    if received is None:
        with stop_signals() as received:
            return serve_until_interrupted(app, received)
    try:
        while app.is_running and not received:
            time.sleep(0.1)
    except KeyboardInterrupt:  # handlers not installed (not the main thread)
        received.append(signal.SIGINT)
    finally:
        app.close(verbose=False)
    if received:
        how = "Ctrl+C" if received[0] == signal.SIGINT else signal.Signals(received[0]).name
        print(f"mhtma-ui: stopped ({how})", flush=True)


def check_listen_address(host: str, port: int) -> None:
    """OSError (one line, naming ``--host``/``--port``) unless this machine can listen on ``host:port``: checked
    here, before the server starts, so the user sees one line instead of the web server's log."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise OSError(f"--host {host!r} is not a known name or address ({exc}); use 127.0.0.1 (this machine "
                      f"only) or 0.0.0.0 (every interface)") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            probe.bind(address)
        except OSError as exc:
            what = (f"port {port} is in use; pick another --port" if exc.errno == 98 else
                    f"{exc.strerror or exc}; use an address of this machine (127.0.0.1, 0.0.0.0) or another --port")
            raise OSError(f"cannot listen on {host}:{port}: {what}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mhtma-ui", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="generator checkpoint (.pt) written by mhtma-train, or a folder written "
                        "by Inpainter.save_pretrained (required)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    add_inference_options(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``mhtma-ui --checkpoint CKPT [--host 127.0.0.1 --port 7860 --device cpu]``; exit status."""
    args = build_parser().parse_args(argv)
    if not args.checkpoint:
        print("mhtma-ui: no checkpoint given. Start it with --checkpoint PATH, a generator checkpoint written "
              "by mhtma-train (e.g. runs/NAME/checkpoints/best.pt).", file=sys.stderr)
        return 2
    path = Path(args.checkpoint).expanduser()
    if not path.exists():
        print(f"mhtma-ui: checkpoint not found: {path}", file=sys.stderr)
        return 2
    if not 0 < args.port < 65536:
        print(f"mhtma-ui: --port must be in 1..65535, got {args.port}", file=sys.stderr)
        return 2
    try:
        device = apply_inference_options(args)
        check_listen_address(args.host, args.port)
    except (ValueError, OSError) as exc:
        print(f"mhtma-ui: {exc}", file=sys.stderr)
        return 2
    try:
        cache = InpainterCache(device, args.precision, args.compile)
        cache.get(path)  # refuse to start with an unusable checkpoint
        app = build_app(path, device=device, cache=cache)
    except (UploadError, ImportError) as exc:
        print(f"mhtma-ui: {exc}", file=sys.stderr)
        return 2
    with stop_signals() as received:
        try:
            launch(app, args.host, args.port, block=False)
        except OSError as exc:  # Gradio: "Cannot find empty port ..." when the port is taken
            print(f"mhtma-ui: cannot listen on {args.host}:{args.port} ({str(exc).split('. ')[0]}); "
                  "pick another --port", file=sys.stderr)
            return 2
        print(f"mhtma-ui: serving {path} on http://{args.host}:{args.port} (Ctrl+C to stop)", flush=True)
        serve_until_interrupted(app, received)
    return 0


if __name__ == "__main__":
    sys.exit(main())
