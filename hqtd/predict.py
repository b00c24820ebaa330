"""``hqtd predict``: a checkpoint's predictions on a folder of images, as files other tools read.

For every image under ``input=DIR`` (``*.png``, ``*.jpg``, ``*.jpeg``, sub-folders kept) it writes,
at the image's own size, into ``out=DIR``:

- ``trainIds/<name>_trainIds.png``: trainIds 0-18 (the 19-class space, also for 16-class models);
- ``labelIds/<name>_labelIds.png``: Cityscapes labelIds, what the Cityscapes benchmark server
  and cityscapesScripts' ``evalPixelLevelSemanticLabeling`` read
  (``CITYSCAPES_RESULTS=<out>/labelIds``);
- ``color/<name>_color.png``: the Cityscapes palette;
- with ``overlay=true``, ``overlay/<name>_overlay.png``: the colours blended over the image.

``<name>`` is the image's name without its extension and a ``_leftImg8bit`` suffix, so a Cityscapes
image ``aachen_000000_000019_leftImg8bit.png`` gives ``aachen_000000_000019_labelIds.png``.
The prediction is the one ``hqtd evaluate`` scores (:func:`hqtd.evaluate.predict_classes`): the
image enters the network at the benchmark's ``target_size``, the logits return to the image's size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hqtd.config import evaluation_config, split_overrides
from hqtd.data.formats.png import read_image
from hqtd.data.labels import CITYSCAPES_ID_TO_TRAINID, TRAINIDS_16, colorize
from hqtd.determinism import cpu_kernels
from hqtd.errors import HqtdError
from hqtd.evaluate import predict_classes, scoring_model
from hqtd.io import atomic_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: trainId -> Cityscapes labelId (ignore, 255, -> 0 "unlabeled").
TRAINID_TO_LABELID = np.zeros(256, dtype=np.uint8)
TRAINID_TO_LABELID[list(CITYSCAPES_ID_TO_TRAINID.values())] = list(CITYSCAPES_ID_TO_TRAINID)
OVERLAY_ALPHA = 0.5  # weight of the colours over the image


def to_train_ids(classes: np.ndarray, num_classes: int) -> np.ndarray:
    """A model's class indices (H, W) as 19-class trainIds (a 16-class model's index i is
    trainId ``TRAINIDS_16[i]``)."""
    if num_classes == 19:
        return classes.astype(np.uint8)
    return np.asarray(TRAINIDS_16, dtype=np.uint8)[classes]


def output_name(image: Path, root: Path) -> Path:
    """The image's path below ``root`` without extension and ``_leftImg8bit``."""
    relative = image.relative_to(root)
    return relative.with_name(relative.stem.removesuffix("_leftImg8bit"))


def _save_png(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def write_prediction(
    train_ids: np.ndarray, image: Image.Image, name: Path, out: Path, overlay: bool
) -> None:
    """The files of one image (module docstring) from its (H, W) trainIds."""
    colours = colorize(train_ids)
    _save_png(train_ids, out / "trainIds" / f"{name}_trainIds.png")
    _save_png(TRAINID_TO_LABELID[train_ids], out / "labelIds" / f"{name}_labelIds.png")
    _save_png(colours, out / "color" / f"{name}_color.png")
    if overlay:
        blend = (1 - OVERLAY_ALPHA) * np.asarray(image) + OVERLAY_ALPHA * colours
        _save_png(blend.round().astype(np.uint8), out / "overlay" / f"{name}_overlay.png")


def predict_command(overrides: list[str]) -> None:
    """``hqtd predict checkpoint=FILE benchmark=NAME input=DIR out=DIR [overlay=true]`` (or
    ``run_dir=DIR`` for a run's protocol checkpoint); other overrides as ``hqtd evaluate``.

    Raises:
        HqtdError: ``input``/``out`` missing, no images under ``input``, a bad checkpoint.
    """
    options = split_overrides(overrides)[1]
    if "input" not in options or "out" not in options:
        raise HqtdError("expected input=DIR (images) and out=DIR (predictions)")
    root, out = Path(options["input"]), Path(options["out"])
    overlay = options.get("overlay", "false").lower() in ("true", "1", "yes")
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise HqtdError(f"input={root}: no {'/'.join(IMAGE_SUFFIXES)} images found")
    config = evaluation_config(overrides)
    model, _, _, device = scoring_model(config, overrides)
    input_size = tuple(config.benchmark.target_size)
    with torch.no_grad(), cpu_kernels(config.train.determinism, config.train.threads):
        for path in images:
            image = read_image(path)
            pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None]
            classes = predict_classes(
                model, pixels, (image.height, image.width), input_size, device,
                config.train.precision, config.train.channels_last,
            )  # fmt: skip
            train_ids = to_train_ids(classes[0].cpu().numpy(), config.benchmark.num_classes)
            write_prediction(train_ids, image, output_name(path, root), out, overlay)
    print(f"{out}: predictions of {len(images)} images (trainIds, labelIds, color)")
