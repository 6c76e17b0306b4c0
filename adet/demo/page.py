"""The model's web page (``embedmask demo``): pick or drop an image (or take a webcam frame) and see every instance's
mask, box, class and score; move the score threshold or pick classes and the page redraws without running the model
again; download the overlay PNG and the COCO JSON; slice large images into tiles, test-time augment, compare a second
checkpoint on the same image. Built with Gradio (the ``demo`` extra); its fonts and scripts come from the package,
nothing from a CDN.

The page runs its models through a :class:`Detector`: :class:`LocalDetector` loads checkpoints in this process
(``adet.load``); ``adet.serve`` gives one that goes through the server's queue and batching, so the page can sit on
``embedmask serve`` without a second model.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from dataclasses import dataclass, field

import cv2
import gradio as gr
import numpy as np

from adet.api import Model, Prediction, load
from adet.data.image_io import read_image
from adet.errors import EmbedMaskError
from adet.utils.visualizer import class_color

DEFAULT_THRESHOLD = 0.5  # embedmask predict --confidence-threshold's default
LOWEST_THRESHOLD = 0.25  # the slider's floor: the models keep detections scoring from 0.22 (config default)
MASK_OPACITY = 0.5
BOX_WIDTH = 2  # pixels
OVERLAY_HEIGHT = 480  # pixels on the page: a small image is not blown up to the column's width
TABLE_HEADERS = ["#", "class", "score", "x", "y", "width", "height", "mask pixels"]


@dataclass
class Detections:
    """One model's answer for the page's image, kept between redraws (a ``gr.State``)."""

    model: str
    prediction: Prediction
    image_name: str  # the uploaded file's name: the COCO JSON's image_id is derived from it as predict does
    timings_ms: dict[str, float] = field(default_factory=dict)
    # Where this answer's downloads are written, again at each redraw (one folder per image and model).
    folder: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="embedmask-demo-"))


class Detector:
    """The page's models by name. ``detect`` answers one image file with one of them."""

    names: list[str]
    supports_options = True  # slicing and test-time augmentation can be asked for

    def class_names(self, name: str) -> list[str]:
        raise NotImplementedError

    async def detect(self, name: str, path: str, tile: int | None, overlap: float, augment: bool) -> Detections:
        raise NotImplementedError


def weight_names(weights: list[str]) -> dict[str, str]:
    """Display name -> weights: the file names, made unique with their folders where two are the same."""
    names: dict[str, str] = {}
    for path in weights:
        name = os.path.basename(str(path).rstrip("/")) or str(path)
        if name in names:
            name = str(path)
        names[name] = str(path)
    return names


class LocalDetector(Detector):
    """Checkpoints run in this process, each loaded once per (tile, overlap, augmentation) setting it is asked for."""

    def __init__(self, weights: list[str], device: str | None = None, config: str | None = None):
        self.weights = weight_names(weights)
        self.names = list(self.weights)
        self.device = device
        self.config = config
        self._models: dict[tuple, Model] = {}
        self.model(self.names[0], None, 0.0, False)  # a bad checkpoint fails at start, not at the first image

    def model(self, name: str, tile: int | None, overlap: float, augment: bool) -> Model:
        key = (name, tile, overlap if tile else 0.0, augment)
        if key not in self._models:
            overrides = ["TEST.AUG.ENABLED", True] if augment else []
            self._models[key] = load(self.weights[name], config=self.config, device=self.device,
                                     overrides=overrides, slice=(tile, tile) if tile else None,
                                     overlap=overlap if tile else None)
        return self._models[key]

    def class_names(self, name: str) -> list[str]:
        return list(self.model(name, None, 0.0, False).class_names or [])

    async def detect(self, name: str, path: str, tile: int | None, overlap: float, augment: bool) -> Detections:
        return await asyncio.to_thread(self._detect, name, path, tile, overlap, augment)

    def _detect(self, name: str, path: str, tile: int | None, overlap: float, augment: bool) -> Detections:
        model = self.model(name, tile, overlap, augment)
        start = time.perf_counter()
        image = read_image(path, "BGR")
        read = time.perf_counter()
        prediction = model.predict(image)
        prediction.source = path  # predict --json's image_id comes from the file's name
        done = time.perf_counter()
        return Detections(name, prediction, os.path.basename(path), {
            "read": (read - start) * 1e3, "model (with preprocessing)": (done - read) * 1e3})


def kept(prediction: Prediction, threshold: float, classes: list[str] | None) -> np.ndarray:
    """Indices of the detections at or above ``threshold`` of the ``classes`` asked for (None: all)."""
    names = prediction.class_names
    return np.array([k for k, score in enumerate(prediction.scores.tolist())
                     if score >= threshold and (classes is None or names[k] in classes)], dtype=np.int64)


def overlay(detections: Detections, keep: np.ndarray) -> gr.AnnotatedImage:
    """Gradio's annotated image: the RGB image under one annotation per kept detection, labelled "#k class score"
    (the page names it when the pointer is over it), in its class's colour: its mask half opaque, its box outline
    opaque."""
    prediction = detections.prediction
    height, width = prediction.image.shape[:2]
    masks, names, scores = prediction.masks, prediction.class_names, prediction.scores
    annotations, colours = [], {}
    for k in keep.tolist():
        alpha = masks[k].astype(np.float32) * MASK_OPACITY  # Gradio draws an annotation's values as its opacity
        x1, y1, x2, y2 = np.clip(np.round(prediction.boxes[k]).astype(int), 0, [width, height, width, height])
        cv2.rectangle(alpha, (int(x1), int(y1)), (int(x2) - 1, int(y2) - 1), 1.0, BOX_WIDTH)
        label = f"#{k + 1} {names[k]} {scores[k]:.2f}"
        annotations.append((alpha, label))
        blue, green, red = class_color(int(prediction.class_ids[k]))
        colours[label] = f"#{red:02x}{green:02x}{blue:02x}"
    return gr.AnnotatedImage(value=(prediction.image[:, :, ::-1], annotations), color_map=colours)


def table(detections: Detections, keep: np.ndarray) -> list[list]:
    """A row per kept detection: its number, class, score, box (x, y, width, height in pixels) and mask area."""
    prediction = detections.prediction
    names, areas = prediction.class_names, prediction.masks[keep].sum(axis=(1, 2))
    rows = []
    for k, area in zip(keep.tolist(), areas.tolist()):
        x1, y1, x2, y2 = prediction.boxes[k].tolist()
        rows.append([k + 1, names[k], round(float(prediction.scores[k]), 3), round(x1, 1), round(y1, 1),
                     round(x2 - x1, 1), round(y2 - y1, 1), int(area)])
    return rows


def downloads(detections: Detections, keep: np.ndarray) -> tuple[str, str]:
    """The overlay PNG (as ``embedmask predict`` draws it) and the COCO JSON (as ``predict --json`` writes it) of the
    kept detections, in the answer's folder."""
    shown, folder = detections.prediction[keep], detections.folder
    stem = os.path.splitext(detections.image_name)[0] or "image"
    png = shown.save(os.path.join(folder, f"{stem}_{detections.model}_overlay.png".replace(os.sep, "_")))
    coco = os.path.join(folder, f"{stem}_{detections.model}.json".replace(os.sep, "_"))
    with open(coco, "w") as f:
        json.dump(shown.to_json(), f)
    return png, coco


def timing_line(detections: Detections, draw_ms: float) -> str:
    stages = {**detections.timings_ms, "draw": draw_ms}
    return (f"**{detections.model}**: {len(detections.prediction)} detections; "
            + ", ".join(f"{stage} {ms:.0f} ms" for stage, ms in stages.items()))


def render(detections: Detections | None, threshold: float, classes: list[str] | None):
    """(annotated image, table rows, timing line, overlay PNG, COCO JSON) of one model's detections."""
    if detections is None:
        return None, [], "", None, None
    start = time.perf_counter()
    keep = kept(detections.prediction, threshold, classes)
    value, rows = overlay(detections, keep), table(detections, keep)
    png, coco = downloads(detections, keep)
    return value, rows, timing_line(detections, (time.perf_counter() - start) * 1e3), png, coco


def controls(detector: Detector, examples: list[str]) -> dict[str, gr.components.Component]:
    """The left column: the image (the page's first file input), the models, the threshold and class filter, the
    slicing and augmentation options, the examples."""
    names, all_classes = detector.names, detector.class_names(detector.names[0])
    parts = {
        "image": gr.Image(label="Image", type="filepath", sources=["upload", "webcam", "clipboard"], elem_id="image"),
        "model": gr.Dropdown(names, value=names[0], label="Model", elem_id="model"),
        "compare": gr.Dropdown(["none", *names], value="none", label="Compare with", elem_id="compare",
                               visible=len(names) > 1),
        "threshold": gr.Slider(LOWEST_THRESHOLD, 1.0, value=DEFAULT_THRESHOLD, step=0.01, label="Score threshold",
                               elem_id="threshold"),
        "classes": gr.CheckboxGroup(all_classes, value=all_classes, label="Classes", elem_id="classes"),
    }
    with gr.Accordion("Large images and test-time augmentation", open=False, visible=detector.supports_options):
        parts["sliced"] = gr.Checkbox(False, label="Sliced inference (tiles)", elem_id="sliced")
        parts["tile"] = gr.Slider(128, 2048, value=640, step=32, label="Tile size (pixels)")
        parts["overlap"] = gr.Slider(0.0, 0.5, value=0.2, step=0.05, label="Tile overlap (fraction of a tile)")
        parts["augment"] = gr.Checkbox(False, label="Test-time augmentation (scales and flips)")
    if examples:
        gr.Examples(list(examples), inputs=parts["image"], label="Examples")
    return parts


def results(compare_shown: bool) -> list[gr.components.Component]:
    """The right column, in the order :func:`render` fills it: the overlay, the table, the timings, the two
    downloads; then the compared model's overlay, table and timings."""
    shown = gr.AnnotatedImage(label="Detections", elem_id="overlay", height=OVERLAY_HEIGHT)
    timings = gr.Markdown(elem_id="timings")
    rows = gr.Dataframe(headers=TABLE_HEADERS, label="Detections table", interactive=False, elem_id="detections")
    with gr.Row():
        png = gr.File(label="Overlay PNG", elem_id="overlay-png")
        coco = gr.File(label="COCO JSON", elem_id="coco-json")
    with gr.Column(visible=compare_shown):
        shown_2 = gr.AnnotatedImage(label="Compared model", elem_id="overlay-2", height=OVERLAY_HEIGHT)
        timings_2 = gr.Markdown()
        rows_2 = gr.Dataframe(headers=TABLE_HEADERS, label="Compared model's detections", interactive=False)
    return [shown, rows, timings, png, coco, shown_2, rows_2, timings_2]


def build_page(detector: Detector, examples: list[str] = (), title: str = "EmbedMask") -> gr.Blocks:
    """The page: the controls on the left; the overlay, timings, table and downloads on the right, and a second
    model's overlay and table under them when one is picked to compare. A new image, model or option runs the
    model(s); the threshold and the class filter only redraw what the page keeps (``gr.State``)."""
    names = detector.names
    with gr.Blocks(title=title, analytics_enabled=False) as page:
        gr.Markdown(f"# {title}\nEmbedMask instance segmentation: drop an image, or pick an example.")
        kept_detections = [gr.State(None), gr.State(None)]  # the model's and the compared model's
        with gr.Row():
            with gr.Column(scale=1):
                parts = controls(detector, examples)
            with gr.Column(scale=2):
                views = results(len(names) > 1)

        async def run(path, name, other, threshold, classes, sliced, tile, overlap, augment):
            if not path:
                return (None, None, *render(None, threshold, classes), *render(None, threshold, classes)[:3])
            options = (int(tile) if sliced else None, float(overlap), bool(augment))
            try:
                a = await detector.detect(name, path, *options)
                b = await detector.detect(other, path, *options) if other in names and other != name else None
            except (EmbedMaskError, ValueError, OSError) as e:
                raise gr.Error(one_line(e, path), print_exception=False) from None
            return (a, b, *render(a, threshold, classes), *render(b, threshold, classes)[:3])

        def redraw(a, b, threshold, classes):
            return (*render(a, threshold, classes), *render(b, threshold, classes)[:3])

        inputs = [parts[k] for k in ("image", "model", "compare", "threshold", "classes", "sliced", "tile", "overlap",
                                     "augment")]
        for k in ("image", "model", "compare", "sliced", "augment"):  # "/page": what a new image runs (undocumented)
            parts[k].change(run, inputs, kept_detections + views, api_name="page" if k == "image" else None,
                            api_visibility="undocumented" if k == "image" else "private")
        for k in ("threshold", "classes"):
            parts[k].change(redraw, [*kept_detections, parts["threshold"], parts["classes"]], views,
                            api_visibility="private")
        # A served model's classes are known once it has loaded: the filter takes them when the page opens.
        page.load(lambda: gr.CheckboxGroup(choices=detector.class_names(names[0]),
                                           value=detector.class_names(names[0])),
                  None, parts["classes"], api_visibility="private")
        api(detector)
    return page


def api(detector: Detector) -> None:
    """The page's API, ``/detect`` (``gradio_client.Client(url).predict(handle_file(path), 0.5, model,
    api_name="/detect")``): the COCO results of one image file, as ``embedmask predict --json`` writes them. Its
    inputs are components the page does not show: a file as sent (read as predict reads files), the threshold, a
    model's name."""
    names = detector.names

    async def detect(image: str, threshold: float, model: str) -> list[dict]:
        if not image:
            raise gr.Error("no image: send an image file as the first argument", print_exception=False)
        if model not in names:
            raise gr.Error(f"model {model!r}: not on this page (it has {', '.join(names)})", print_exception=False)
        try:
            detections = await detector.detect(model, image, None, 0.0, False)
        except (EmbedMaskError, ValueError, OSError) as e:
            raise gr.Error(one_line(e, image), print_exception=False) from None
        return detections.prediction[kept(detections.prediction, threshold, None)].to_json()

    with gr.Row(visible=False):
        image, threshold = gr.File(type="filepath"), gr.Number(DEFAULT_THRESHOLD)
        model, answer = gr.Textbox(names[0]), gr.JSON()
        call = gr.Button()  # never shown: the endpoint's trigger
    call.click(detect, [image, threshold, model], answer, api_name="detect")


def one_line(error: Exception, path: str) -> str:
    """The error on one line, naming the upload by its own name rather than Gradio's cache folder."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text.replace(os.path.dirname(path) + os.sep, "")
