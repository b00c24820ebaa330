"""``hqtd prepare`` end to end through the CLI, on tiny raw trees in the real formats."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from raw_datasets import (
    CITYSCAPES_TO_TRAIN,
    SIZE,
    SYNTHIA_TO_TRAIN,
    all_8bit_ids,
    all_synthia_ids,
    cityscapes_paths,
    expected_16,
    expected_trainids,
    make_cityscapes,
    make_gta5,
    make_synthia,
    write_gray_label,
    write_palette_label,
    write_rgb,
)

import hqtd.data.formats.cityscapes
import hqtd.data.prepare
from hqtd.cli import main
from hqtd.data.datasets import SegmentationDataset


def run_prepare(dataset: str, raw: Path, out: Path, *extra: str) -> int:
    return main(["prepare", dataset, "--root", str(raw), "--out", str(out), "--workers", "1",
                 *extra])  # fmt: skip


def read_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def tree_state(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder``: content hash and modification time."""
    return {
        str(path.relative_to(folder)): (hashlib.sha256(path.read_bytes()).hexdigest(),
                                        path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*")) if path.is_file()
    }  # fmt: skip


def test_gta5_every_labelid_maps_to_its_trainid(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    ids = make_gta5(raw)
    assert run_prepare("gta5", raw, out) == 0
    entries = manifest(out)["splits"]["train"]
    assert [e["id"] for e in entries] == ids
    label = read_png(out / entries[0]["label"])
    assert label.dtype == np.uint8
    np.testing.assert_array_equal(label, expected_trainids(all_8bit_ids(), CITYSCAPES_TO_TRAIN))
    for raw_id, train_id in CITYSCAPES_TO_TRAIN.items():  # spelled out: 19 mapped ids
        assert label.ravel()[raw_id] == train_id


def test_synthia_class_channel_and_16_class_remap(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    make_synthia(raw)
    assert run_prepare("synthia", raw, out) == 0
    entry = manifest(out)["splits"]["train"][0]
    label = read_png(out / entry["label"])
    train_ids = expected_trainids(all_synthia_ids(), SYNTHIA_TO_TRAIN)
    np.testing.assert_array_equal(label, train_ids)
    assert set(np.unique(label)) == set(range(19)) | {255}

    item = SegmentationDataset(out, "train", None, num_classes=16, train=False)[0]
    np.testing.assert_array_equal(item["label"].numpy(), expected_16(train_ids))
    assert set(item["label"].unique().tolist()) == set(range(16)) | {255}


def test_cityscapes_manifest_contents(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    ids = make_cityscapes(raw)
    assert run_prepare("cityscapes", raw, out) == 0
    data = manifest(out)
    assert data["dataset"] == "cityscapes"
    assert data["counts"] == {"train": 3, "val": 2}
    assert data["image_sizes"] == {"train": {f"{SIZE}x{SIZE}": 3}, "val": {f"{SIZE}x{SIZE}": 2}}
    assert data["resize"] is None
    for split in ("train", "val"):
        entries = data["splits"][split]
        assert [e["id"] for e in entries] == ids[split]
        pixels = np.zeros(19, dtype=np.int64)
        for entry in entries:
            raw_image, raw_label = cityscapes_paths(raw, split, entry["id"])
            # images stay in RAW, referenced relative to OUT
            assert (out / entry["image"]).resolve() == raw_image.resolve()
            assert entry["label"] == f"labels/{split}/{entry['id']}.png"
            label = read_png(out / entry["label"])
            np.testing.assert_array_equal(
                label, expected_trainids(read_png(raw_label), CITYSCAPES_TO_TRAIN)
            )
            pixels += [(label == c).sum() for c in range(19)]
        assert data["class_pixels"][split] == pixels.tolist()
    # the first train label holds every labelId once: each of the 19 classes has one pixel
    first = read_png(out / data["splits"]["train"][0]["label"])
    assert np.bincount(first.ravel(), minlength=256)[:19].tolist() == [1] * 19


def test_second_run_rewrites_nothing_and_raw_is_untouched(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    make_cityscapes(raw)
    raw_before = tree_state(raw)
    assert run_prepare("cityscapes", raw, out, "--resize", "8x4") == 0
    first = tree_state(out)
    assert run_prepare("cityscapes", raw, out, "--resize", "8x4") == 0
    assert tree_state(out) == first
    assert tree_state(raw) == raw_before
    assert not list(out.rglob("*.tmp"))


def test_changed_mapping_converts_every_label_again(tmp_path: Path, monkeypatch) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    ids = make_gta5(raw)
    assert run_prepare("gta5", raw, out) == 0
    before = manifest(out)
    edited = {**CITYSCAPES_TO_TRAIN, 7: 1}  # labelId 7 (road) now maps to sidewalk
    edited_lut = np.full(256, 255, dtype=np.uint8)
    for raw_id, train_id in edited.items():
        edited_lut[raw_id] = train_id
    # As an edited labels.py: GTA5 labels are read with the Cityscapes table.
    monkeypatch.setattr(hqtd.data.formats.cityscapes, "LABEL_TABLE", edited_lut)
    assert run_prepare("gta5", raw, out) == 0
    after = manifest(out)
    label = read_png(out / after["splits"]["train"][0]["label"])
    np.testing.assert_array_equal(label, expected_trainids(all_8bit_ids(), edited))
    assert label.ravel()[7] == 1
    assert after["label_table_sha256"] != before["label_table_sha256"]
    assert [e["id"] for e in after["splits"]["train"]] == ids


def test_raw_label_replaced_with_its_old_mtime_is_converted_again(tmp_path: Path, capsys) -> None:
    """``cp -p`` of a corrected label keeps the old file's mtime (older than the output)."""
    raw, out = tmp_path / "raw", tmp_path / "out"
    ids = make_gta5(raw)
    assert run_prepare("gta5", raw, out) == 0
    target = raw / "labels" / f"{ids[1]}.png"
    old_stat = target.stat()
    corrected = tmp_path / "corrected.png"
    write_palette_label(corrected, np.full((SIZE, SIZE), 26))  # labelId 26 = car = trainId 13
    os.utime(corrected, ns=(old_stat.st_atime_ns, old_stat.st_mtime_ns))
    shutil.copy2(corrected, target)  # what cp -p does
    assert target.stat().st_mtime_ns == old_stat.st_mtime_ns
    capsys.readouterr()
    assert run_prepare("gta5", raw, out) == 0
    assert "(1 converted, 2 up to date" in capsys.readouterr().out
    np.testing.assert_array_equal(read_png(out / "labels" / "train" / f"{ids[1]}.png"), 13)
    entry = manifest(out)["splits"]["train"][1]
    assert entry["sources"]["label"] == hashlib.sha256(target.read_bytes()).hexdigest()


def test_changed_resize_rewrites_outputs(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    make_gta5(raw)
    assert run_prepare("gta5", raw, out) == 0
    assert run_prepare("gta5", raw, out, "--resize", "8x4") == 0
    entry = manifest(out)["splits"]["train"][0]
    assert read_png(out / entry["label"]).shape == (4, 8)


def test_parallel_workers_give_the_same_result(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    make_synthia(raw)
    assert run_prepare("synthia", raw, tmp_path / "one") == 0
    args = ["prepare", "synthia", "--root", str(raw), "--out", str(tmp_path / "two")]
    assert main([*args, "--workers", "2"]) == 0
    assert manifest(tmp_path / "one") == manifest(tmp_path / "two")
    for entry in manifest(tmp_path / "one")["splits"]["train"]:
        one, two = (read_png(tmp_path / d / entry["label"]) for d in ("one", "two"))
        np.testing.assert_array_equal(one, two)


def test_resize_writes_images_bilinear_and_labels_nearest(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    ids = make_gta5(raw)
    assert run_prepare("gta5", raw, out, "--resize", "8x4") == 0
    data = manifest(out)
    assert data["resize"] == [8, 4]
    entry = data["splits"]["train"][0]
    assert entry["image"] == f"images/train/{ids[0]}.png"
    source = Image.open(raw / "images" / f"{ids[0]}.png")
    np.testing.assert_array_equal(
        read_png(out / entry["image"]), np.asarray(source.resize((8, 4), Image.Resampling.BILINEAR))
    )
    full = expected_trainids(all_8bit_ids(), CITYSCAPES_TO_TRAIN)
    # nearest from 16 to 8 columns / 4 rows: PIL samples source pixel (2j + 1, 4i + 2)
    np.testing.assert_array_equal(read_png(out / entry["label"]), full[2::4, 1::2])


def test_size_mismatch_is_resized_with_resize_and_recorded(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    ids = make_gta5(raw)
    write_palette_label(raw / "labels" / f"{ids[1]}.png", np.full((8, 8), 7))
    assert run_prepare("gta5", raw, out, "--resize", "8x4") == 0
    data = manifest(out)
    assert data["size_mismatch"] == {"train": [ids[1]]}
    label = read_png(out / data["splits"]["train"][1]["label"])
    np.testing.assert_array_equal(label, np.zeros((4, 8)))  # labelId 7 = road = trainId 0


def test_split_list_restricts_train(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    ids = make_gta5(raw, n=4)
    listing = tmp_path / "list.txt"
    listing.write_text(f"# authors' list\n{ids[3]}.png\n\nimages/{ids[1]}.png\n")
    assert run_prepare("gta5", raw, out, "--split-list", str(listing)) == 0
    assert [e["id"] for e in manifest(out)["splits"]["train"]] == [ids[1], ids[3]]
    assert not (out / "labels" / "train" / f"{ids[0]}.png").exists()


def test_split_list_of_unpadded_integers_names_the_padded_files(tmp_path: Path) -> None:
    """The authors' datasets/gta5_list/train.txt says ``1`` for ``00001.png``."""
    raw, out = tmp_path / "raw", tmp_path / "out"
    ids = make_gta5(raw, n=3)
    assert all(len(i) == 5 and i.isdigit() and i != str(int(i)) for i in ids)
    listing = tmp_path / "train.txt"
    listing.write_text(f"{int(ids[2])}\n{int(ids[0])}\n")
    assert run_prepare("gta5", raw, out, "--split-list", str(listing)) == 0
    assert [e["id"] for e in manifest(out)["splits"]["train"]] == [ids[0], ids[2]]


def test_interrupted_run_leaves_complete_files_and_resumes(tmp_path: Path, monkeypatch) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    ids = make_gta5(raw)
    decode = hqtd.data.prepare.decode_label
    calls = []

    def decode_then_die(dataset: str, path: Path) -> np.ndarray:
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if killed while converting the second sample
        return decode(dataset, path)

    monkeypatch.setattr(hqtd.data.prepare, "decode_label", decode_then_die)
    assert run_prepare("gta5", raw, out) == 130
    assert not (out / "manifest.json").exists()
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == [f"{ids[0]}.png"]
    monkeypatch.setattr(hqtd.data.prepare, "decode_label", decode)
    done = tree_state(out)
    assert run_prepare("gta5", raw, out) == 0
    assert tree_state(out)[f"labels/train/{ids[0]}.png"] == done[f"labels/train/{ids[0]}.png"]
    assert manifest(out)["counts"] == {"train": 3}


def truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[:-30])
    return path


def corrupt_middle(path: Path) -> Path:
    data = bytearray(path.read_bytes())
    data[40:60] = b"\x00" * 20  # inside the image data; header and IEND trailer intact
    path.write_bytes(bytes(data))
    return path


def remove(path: Path) -> Path:
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    return path


def gta5_missing_root(raw: Path, ids: list[str]) -> Path:
    return remove(raw)


def gta5_missing_labels_folder(raw: Path, ids: list[str]) -> Path:
    return remove(raw / "labels")


def cityscapes_missing_gtfine_val(raw: Path, ids: dict[str, list[str]]) -> Path:
    return remove(raw / "gtFine" / "val")


def gta5_image_without_label(raw: Path, ids: list[str]) -> Path:
    remove(raw / "labels" / f"{ids[1]}.png")
    return raw / "images" / f"{ids[1]}.png"


def synthia_label_without_image(raw: Path, ids: list[str]) -> Path:
    remove(raw / "RGB" / f"{ids[2]}.png")
    return raw / "GT" / "LABELS" / f"{ids[2]}.png"


def cityscapes_image_without_label(raw: Path, ids: dict[str, list[str]]) -> Path:
    image, label = cityscapes_paths(raw, "val", ids["val"][0])
    remove(label)
    return image


def gta5_truncated_image(raw: Path, ids: list[str]) -> Path:
    return truncate(raw / "images" / f"{ids[2]}.png")


def synthia_truncated_label(raw: Path, ids: list[str]) -> Path:
    return truncate(raw / "GT" / "LABELS" / f"{ids[1]}.png")


def gta5_label_not_a_png(raw: Path, ids: list[str]) -> Path:
    path = raw / "labels" / f"{ids[0]}.png"
    path.write_bytes(b"GIF89a" + bytes(100))
    return path


def gta5_corrupt_label_data(raw: Path, ids: list[str]) -> Path:
    return corrupt_middle(raw / "labels" / f"{ids[2]}.png")


def gta5_corrupt_image_data(raw: Path, ids: list[str]) -> Path:
    return corrupt_middle(raw / "images" / f"{ids[1]}.png")


def gta5_label_size_differs(raw: Path, ids: list[str]) -> Path:
    path = raw / "labels" / f"{ids[1]}.png"
    write_palette_label(path, np.zeros((8, 8), np.uint8))
    return path


def gta5_rgb_label(raw: Path, ids: list[str]) -> Path:
    path = raw / "labels" / f"{ids[0]}.png"
    write_rgb(path, np.random.default_rng(0))
    return path


def synthia_label_8bit(raw: Path, ids: list[str]) -> Path:
    path = raw / "GT" / "LABELS" / f"{ids[0]}.png"
    write_gray_label(path, np.zeros((SIZE, SIZE)))
    return path


def gta5_empty(raw: Path, ids: list[str]) -> Path:
    for path in raw.rglob("*.png"):
        path.unlink()
    return raw / "images"


def gta5_split_list_unknown_id(raw: Path, ids: list[str]) -> Path:
    path = raw.parent / "list.txt"
    path.write_text(f"{ids[0]}\n99999\n")
    return path


def synthia_empty_split_list(raw: Path, ids: list[str]) -> Path:
    path = raw.parent / "list.txt"
    path.write_text("# nothing listed\n")
    return path


def gta5_out_inside_root(raw: Path, ids: list[str]) -> Path:
    return raw / "prepared"


MAKERS = {"gta5": make_gta5, "synthia": make_synthia, "cityscapes": make_cityscapes}
# Each breaker damages a fresh raw tree and returns the path the error line must name.
BREAKERS = [
    gta5_missing_root, gta5_missing_labels_folder, cityscapes_missing_gtfine_val,
    gta5_image_without_label, synthia_label_without_image, cityscapes_image_without_label,
    gta5_truncated_image, synthia_truncated_label, gta5_label_not_a_png, gta5_corrupt_label_data,
    gta5_corrupt_image_data,
    gta5_label_size_differs, gta5_rgb_label, synthia_label_8bit, gta5_empty,
    gta5_split_list_unknown_id, synthia_empty_split_list, gta5_out_inside_root,
]  # fmt: skip


@pytest.mark.parametrize("breaker", BREAKERS, ids=lambda f: f.__name__)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    breaker, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    dataset = breaker.__name__.split("_")[0]
    raw, out = tmp_path / "raw", tmp_path / "out"
    ids = MAKERS[dataset](raw)
    named = breaker(raw, ids)
    args = ["--split-list", str(named)] if named.name == "list.txt" else []
    if breaker is gta5_out_inside_root:
        out = named
    capsys.readouterr()

    assert run_prepare(dataset, raw, out, *args) == 2

    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert str(named) in err
    assert not (out / "manifest.json").exists()
    written = sorted(p.name for p in out.rglob("*") if p.is_file()) if out.exists() else []
    if breaker is gta5_corrupt_label_data:  # found while decoding: the other labels are complete
        assert written == [f"{ids[0]}.png", f"{ids[1]}.png"]
    else:  # found by the check pass, before anything is written
        assert written == []


def test_labels_without_any_class_are_counted_and_warned(tmp_path: Path, capsys) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    ids = make_gta5(raw)
    write_palette_label(raw / "labels" / f"{ids[1]}.png", np.zeros((SIZE, SIZE), np.uint8))
    assert run_prepare("gta5", raw, out) == 0
    assert "warning: 1 label(s) hold no class" in capsys.readouterr().out
    assert manifest(out)["all_ignore"] == {"train": [ids[1]]}
    assert (read_png(out / "labels" / "train" / f"{ids[1]}.png") == 255).all()


def test_clean_data_has_no_all_ignore_entry(tmp_path: Path, capsys) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    make_gta5(raw)
    assert run_prepare("gta5", raw, out) == 0
    assert "all_ignore" not in manifest(out) and "warning" not in capsys.readouterr().out


def test_orphan_temporaries_of_a_killed_run_are_swept(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    ids = make_gta5(raw)
    assert run_prepare("gta5", raw, out) == 0
    done = tree_state(out)
    orphans = [out / "labels" / "train" / f".{ids[0]}.png.k2x.tmp", out / ".manifest.json.q.tmp"]
    for orphan in orphans:
        orphan.write_bytes(b"half a png")
    assert run_prepare("gta5", raw, out) == 0
    assert tree_state(out) == done  # the orphans are gone, every complete output untouched


def test_the_dataset_names_import_without_numpy_cv2_or_torch() -> None:
    """The command line and the workflow's grid name the datasets from hqtd.data.formats, whose
    own module holds constants only: importing them loads none of the heavy libraries."""
    heavy = ("numpy", "cv2", "PIL", "torch")
    code = f"import sys, hqtd.cli, hqtd.grid; print([m for m in {heavy!r} if m in sys.modules])"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "[]"
