"""`hqtd predict`: trainId, labelId and colour PNGs that cityscapesScripts' evaluator accepts, with
the mIoU `hqtd evaluate` gives (issue 17)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from raw_datasets import CITIES, CITYSCAPES_TO_TRAIN, make_cityscapes
from test_checkpoints import _hqtd_checkpoint, _mini

from hqtd.cli import main
from hqtd.data.labels import CLASS_NAMES

#: A mini benchmark whose target val is the fixture (strict protocol: full-size labels).
SETTINGS = ["benchmark=mini_gta5", "model.mini_width=8", "train.num_workers=0", "train.threads=1"]


@pytest.fixture
def scored(tmp_path: Path, capsys) -> dict:
    """A Cityscapes tree in the real layout, prepared; an hqtd checkpoint; its predictions on val
    and its hqtd evaluation under the strict protocol."""
    raw, data = tmp_path / "cityscapes", tmp_path / "data"
    make_cityscapes(raw)
    prepared = data / "prepared" / "mini_cityscapes"
    assert main(["prepare", "cityscapes", "--root", str(raw), "--out", str(prepared)]) == 0
    checkpoint = tmp_path / "model.pt"
    _hqtd_checkpoint(checkpoint, _mini(seed=1), _mini(seed=2))
    common = [f"checkpoint={checkpoint}", f"data_root={data}", *SETTINGS]
    out = tmp_path / "predictions"
    val_images = raw / "leftImg8bit" / "val"
    assert main(["predict", *common, f"input={val_images}", f"out={out}", "overlay=true"]) == 0
    evaluation = tmp_path / "evaluation"
    assert main(["evaluate", *common, "protocol=strict", f"out={evaluation}"]) == 0
    capsys.readouterr()
    metrics = json.loads((evaluation / "metrics.json").read_text())
    return {"raw": raw, "out": out, "metrics": metrics}


def test_files_per_image_in_cityscapes_naming(scored):
    out = scored["out"]
    samples = [f"frankfurt_{k:06d}_{19 + k:06d}" for k in range(CITIES["val"]["frankfurt"])]
    for sample in samples:
        train_ids = np.asarray(
            Image.open(out / "trainIds" / "frankfurt" / f"{sample}_trainIds.png")
        )
        label_ids = np.asarray(
            Image.open(out / "labelIds" / "frankfurt" / f"{sample}_labelIds.png")
        )
        colour = np.asarray(Image.open(out / "color" / "frankfurt" / f"{sample}_color.png"))
        assert train_ids.shape == label_ids.shape == colour.shape[:2] == (16, 16)  # image size
        assert train_ids.max() < 19
        to_label = {train: label for label, train in CITYSCAPES_TO_TRAIN.items()}
        np.testing.assert_array_equal(label_ids, np.vectorize(to_label.get)(train_ids))
        assert (out / "overlay" / "frankfurt" / f"{sample}_overlay.png").is_file()


def test_cityscapes_evaluator_accepts_them_and_agrees_with_hqtd(scored, tmp_path):
    (tmp_path / "export").mkdir()  # the evaluator requires an existing export folder
    env = {
        **os.environ,
        "CITYSCAPES_DATASET": str(scored["raw"]),
        "CITYSCAPES_RESULTS": str(scored["out"] / "labelIds"),
        "CITYSCAPES_EXPORT_DIR": str(tmp_path / "export"),
    }
    # cityscapesScripts 2.3.0 calls np.in1d, which NumPy 2 removed; np.isin is its replacement.
    run = (
        "import runpy, numpy; numpy.in1d = numpy.isin; runpy.run_module("
        "'cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling', run_name='__main__')"
    )
    done = subprocess.run(
        [sys.executable, "-c", run], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads((tmp_path / "export" / "resultPixelLevelSemanticLabeling.json").read_text())
    theirs = result["classScores"]
    ours = scored["metrics"]
    for name, iou in zip(CLASS_NAMES, ours["iou"], strict=True):
        if iou is None:
            assert math.isnan(theirs[name])
        else:
            assert theirs[name] == pytest.approx(iou / 100.0, abs=1e-9)
    assert result["averageScoreClasses"] == pytest.approx(ours["mIoU"] / 100.0, abs=1e-9)
    assert ours["mIoU"] > 0.0  # the comparison is not between two empty scores
