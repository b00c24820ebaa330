"""The mini benchmark generator: determinism, real on-disk formats, domain differences, prepare."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from hqtd.data.labels import CITYSCAPES_ID_TO_TRAINID, SYNTHIA_ID_TO_TRAINID
from hqtd.data.prepare import prepare
from hqtd.data.synth import domains
from hqtd.data.synth.render import render
from hqtd.data.synth.write import Counts, generate, sample_paths
from hqtd.errors import HqtdError

SMALL = Counts(gta5=3, synthia=3, cityscapes_train=4, cityscapes_val=2)
CITYSCAPES_NAME = re.compile(r"([a-z]+)/\1_\d{6}_\d{6}_(leftImg8bit|gtFine_labelIds)\.png")
TERRAIN, TRUCK, TRAIN = 9, 14, 16


def files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes)."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small benchmark drawn once with seed 0 in this process."""
    out = tmp_path_factory.mktemp("raw")
    generate(out, seed=0, counts=SMALL, workers=1)
    return out


def test_same_seed_gives_identical_bytes_whatever_the_workers(raw: Path, tmp_path: Path) -> None:
    generate(tmp_path, seed=0, counts=SMALL, workers=2)
    first, second = files(raw), files(tmp_path)
    assert len(first) == 2 * (3 + 3 + 4 + 2) + 3  # images, labels, three markers
    assert first == second


def test_another_seed_redraws_every_image_and_a_rerun_skips(raw: Path, tmp_path: Path) -> None:
    generate(tmp_path, seed=0, counts=SMALL, workers=1)
    label = tmp_path / "mini_gta5" / "labels" / "00001.png"
    stamp = label.stat().st_mtime_ns
    generate(tmp_path, seed=0, counts=SMALL, workers=1)
    assert label.stat().st_mtime_ns == stamp  # complete for this seed: nothing rewritten

    generate(tmp_path, seed=1, counts=SMALL, workers=1)
    old, new = files(raw), files(tmp_path)
    assert old.keys() == new.keys()
    images = [k for k in old if "images/" in k or "RGB/" in k or "leftImg8bit/" in k]
    assert len(images) == 12
    assert all(old[k] != new[k] for k in images)
    marker = json.loads((tmp_path / "mini_synthia" / ".complete").read_text())
    assert marker["seed"] == 1


def test_bad_arguments_are_one_line_user_errors(tmp_path: Path) -> None:
    with pytest.raises(HqtdError, match="--seed"):
        generate(tmp_path, seed=-1, counts=SMALL)
    with pytest.raises(HqtdError, match="at least one image"):
        generate(tmp_path, counts=Counts(cityscapes_val=0))
    assert not any(tmp_path.iterdir())


def test_gta5_files_are_rgb_images_and_palette_labels_of_labelids(raw: Path) -> None:
    for i in (1, 2, 3):
        image = Image.open(raw / "mini_gta5" / "images" / f"{i:05d}.png")
        label = Image.open(raw / "mini_gta5" / "labels" / f"{i:05d}.png")
        assert (image.mode, image.size) == ("RGB", (256, 144))
        assert (label.mode, label.size) == ("P", (256, 144))
        ids = set(np.unique(np.asarray(label)).tolist())
        assert ids <= set(CITYSCAPES_ID_TO_TRAINID) | {0, 4, 10}
        assert {7, 11, 26} <= ids  # road, building, car in every street scene
        # The palette colours labelIds like the real files (road purple).
        assert label.getpalette()[7 * 3 : 7 * 3 + 3] == [128, 64, 128]


def test_synthia_labels_are_16bit_3channel_with_class_first(raw: Path) -> None:
    for i in range(3):
        image = cv2.imread(str(raw / "mini_synthia" / "RGB" / f"{i:07d}.png"), cv2.IMREAD_UNCHANGED)
        label = cv2.imread(
            str(raw / "mini_synthia" / "GT" / "LABELS" / f"{i:07d}.png"), cv2.IMREAD_UNCHANGED
        )
        assert image.shape == (144, 256, 3) and image.dtype == np.uint8
        assert label.shape == (144, 256, 3) and label.dtype == np.uint16
        classes = label[..., 2]  # cv2 order is BGR: the first PNG channel is index 2
        assert set(np.unique(classes).tolist()) <= set(SYNTHIA_ID_TO_TRAINID) | {0, 22}
        assert {2, 3} <= set(np.unique(classes).tolist())  # building, road
        assert not label[..., 0].any()
        # The second channel holds instance ids: set on things (cars, 8), zero on stuff (road, 3).
        assert (label[..., 1][classes == 8] > 0).all()
        assert not label[..., 1][classes == 3].any()


def test_cityscapes_layout_names_and_void_ids(raw: Path) -> None:
    root = raw / "mini_cityscapes"
    for split, count, cities in (("train", 4, {"aachen", "bochum", "bremen"}),
                                 ("val", 2, {"frankfurt", "lindau", "munster"})):  # fmt: skip
        images = sorted((root / "leftImg8bit" / split).glob("*/*.png"))
        labels = sorted((root / "gtFine" / split).glob("*/*.png"))
        assert len(images) == len(labels) == count
        for image_path, label_path in zip(images, labels, strict=True):
            image_rel = str(image_path.relative_to(root / "leftImg8bit" / split))
            assert CITYSCAPES_NAME.fullmatch(image_rel)
            assert image_rel.split("/")[0] in cities
            assert label_path.name == image_path.name.replace("leftImg8bit", "gtFine_labelIds")
            label = Image.open(label_path)
            assert (label.mode, label.size) == ("L", (256, 128))
            ids = set(np.unique(np.asarray(label)).tolist())
            assert {0, 1} <= ids  # out-of-roi border and ego-vehicle bonnet: ignored by training
            assert ids <= set(CITYSCAPES_ID_TO_TRAINID) | {0, 1, 4, 10}


def class_fractions(domain: domains.Domain, images: int) -> np.ndarray:
    """Fraction of pixels per scene code over ``images`` renders."""
    counts = np.zeros(domains.NUM_CODES)
    for i in range(images):
        _, code, _ = render(domain, np.random.default_rng([7, i]))
        counts += np.bincount(code.ravel(), minlength=domains.NUM_CODES)
    return counts / counts.sum()


def test_class_frequencies_differ_between_domains_as_designed() -> None:
    gta, synthia, cityscapes = (
        class_fractions(d, 24) for d in (domains.GTA5, domains.SYNTHIA, domains.CITYSCAPES)
    )
    people = [domains.PERSON, domains.RIDER, domains.BICYCLE]
    vehicles = [domains.CAR, domains.TRUCK]
    assert cityscapes[people].sum() > 2 * gta[people].sum()
    assert gta[vehicles].sum() > 1.3 * cityscapes[vehicles].sum()
    assert gta[domains.TRUCK] > 2 * cityscapes[domains.TRUCK]
    assert synthia[[TERRAIN, TRUCK, TRAIN]].sum() == 0
    assert gta[TERRAIN] > 0 and cityscapes[TERRAIN] > 0
    # Every class of the 19 appears in the GTA5-like source and the Cityscapes-like target.
    assert (gta[:19] > 0).all() and (cityscapes[:19] > 0).all()


def test_camera_geometry_differs_between_domains() -> None:
    """The horizon (pitch) lies higher in SYNTHIA-like images (raised camera) than in GTA5-like."""

    def mean_sky_bottom(domain: domains.Domain) -> float:
        rows = []
        for i in range(12):
            _, code, _ = render(domain, np.random.default_rng([3, i]))
            ground = (code == domains.ROAD).any(axis=1)
            rows.append(np.argmax(ground) / code.shape[0])  # first row showing road
        return float(np.mean(rows))

    assert mean_sky_bottom(domains.SYNTHIA) + 0.08 < mean_sky_bottom(domains.GTA5)


def test_prepare_reads_all_three_datasets(raw: Path, tmp_path: Path) -> None:
    for dataset, layout, counts in (
        ("mini_gta5", "gta5", {"train": 3}),
        ("mini_synthia", "synthia", {"train": 3}),
        ("mini_cityscapes", "cityscapes", {"train": 4, "val": 2}),
    ):
        manifest = prepare(layout, root=raw / dataset, out=tmp_path / dataset, workers=1)
        assert manifest["counts"] == counts
        pixels = np.asarray(manifest["class_pixels"]["train"])
        assert pixels[[0, 2, 10, 13]].min() > 0  # road, building, sky, car
        if layout == "synthia":
            assert pixels[[TERRAIN, TRUCK, TRAIN]].sum() == 0


def test_a_deleted_raw_image_is_drawn_again(raw: Path, tmp_path: Path, capsys) -> None:
    generate(tmp_path, seed=0, counts=SMALL, workers=1)
    deleted = tmp_path / "mini_cityscapes" / sample_paths("mini_cityscapes", "val", 1)[0]
    deleted.unlink()
    capsys.readouterr()
    generate(tmp_path, seed=0, counts=SMALL, workers=1)
    out = capsys.readouterr().out
    assert "mini_cityscapes: 1 sample(s) missing, drawing them again" in out
    assert "mini_gta5: up to date" in out
    assert files(tmp_path) == files(raw)  # the same bytes as the first draw, nothing else changed
