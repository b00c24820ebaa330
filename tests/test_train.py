"""Training loop and evaluation command: schedule, data streams, checkpoints, resume, DDP, errors.

The runs use a tiny mini benchmark (``hqtd synth`` at a handful of images, prepared at its
stored size and resized to 64x32 by the datasets) and a mini model of width 8.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

import hqtd.codedeps
import hqtd.config
import hqtd.provenance
import hqtd.train
import hqtd.training.run_log
from hqtd.adapt.step import StepResult
from hqtd.cli import main
from hqtd.config import load_config
from hqtd.data.datasets import SegmentationDataset
from hqtd.data.prepare import prepare
from hqtd.data.synth.write import Counts, generate
from hqtd.determinism import PORTABLE_ENV
from hqtd.errors import HqtdError
from hqtd.evaluate import evaluate_command, selection_score
from hqtd.metrics import summary
from hqtd.models.checkpoints import load_checkpoint, load_weights, save_checkpoint
from hqtd.models.deeplabv2 import build_model
from hqtd.train import train
from hqtd.training.run_dir import config_differences, truncate_log
from hqtd.training.run_log import RunLog
from hqtd.training.schedule import poly_lr
from hqtd.training.stage import stage_datasets
from hqtd.training.streams import BatchStream, SeededItems, rng_states, set_rng_states

TINY = [
    "benchmark.source_size=[64,36]",
    "benchmark.target_size=[64,32]",
    "benchmark.crop_size=32",
    "model.mini_width=8",
    "train.threads=1",
    "train.log_every=1",
]
METRICS_KEYS = {
    "benchmark", "method", "seed", "protocol", "iteration", "git_revision", "num_classes",
    "class_names", "iou", "mIoU", "pixel_accuracy", "weights", "provenance", "data_manifests",
    "run_finished", "boundary_px", "boundary_iou", "mBIoU", "trimap_mIoU", "intervals",
}  # fmt: skip


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared mini benchmark of 4 source, 4 target-train and 2 target-val images."""
    root = tmp_path_factory.mktemp("data")
    generate(root / "raw", seed=0, counts=Counts(4, 4, 4, 2), workers=1)
    for raw, kind in (
        ("mini_gta5", "gta5"),
        ("mini_synthia", "synthia"),
        ("mini_cityscapes", "cityscapes"),
    ):
        prepare(kind, root / "raw" / raw, root / "prepared" / raw, workers=1)
    return root


def run_args(data_root: Path, run_dir: Path, *extra: str) -> list[str]:
    return [f"data_root={data_root}", f"run_dir={run_dir}", *TINY, *extra]


@pytest.fixture(scope="module")
def source_checkpoint(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The last checkpoint of a 4-iteration source-only run (the start of every adaptation)."""
    run_dir = tmp_path_factory.mktemp("runs") / "source_only"
    args = ["method=source_only", "train.source_only_iterations=4", "train.eval_every=2"]
    train(load_config(run_args(data_root, run_dir, *args)))
    return run_dir / "checkpoints" / "last.pt"


def adapt_args(data_root: Path, run_dir: Path, init: Path, *extra: str) -> list[str]:
    return run_args(
        data_root,
        run_dir,
        "method=full",
        f"train.init_checkpoint={init}",
        "train.iterations=6",
        "train.checkpoint_every=2",
        "train.eval_every=3",
        *extra,
    )


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def tensorboard_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of the run's TensorBoard events, read by TensorBoard's own loader."""
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def state_dicts_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------------
# Pieces


def test_poly_lr_by_hand():
    assert poly_lr(0.01, 0, 100, 0.9) == 0.01
    # 0.5 ** 0.9 = exp(0.9 * ln 0.5) = exp(-0.6238325) = 0.5358867
    assert poly_lr(0.01, 50, 100, 0.9) == pytest.approx(0.005358867, rel=1e-6)
    # 0.01 ** 0.9 = 10 ** -1.8 = 0.0158489
    assert poly_lr(2.5e-4, 99, 100, 0.9) == pytest.approx(2.5e-4 * 0.0158489, rel=1e-5)


def take(stream: BatchStream, batches: int) -> list[tuple[int, int]]:
    keys = iter(stream)
    return [next(keys) for _ in range(batches * stream.batch_size)]


def test_batch_stream_covers_epochs_and_resumes_without_state():
    keys = take(BatchStream(size=5, batch_size=2, seed=3, stream=1), batches=5)  # two epochs
    indices = [index for index, _ in keys]
    assert sorted(indices[:5]) == sorted(indices[5:]) == [0, 1, 2, 3, 4]
    assert indices[:5] != indices[5:]  # a fresh permutation per epoch (for this seed)
    assert len({seed for _, seed in keys}) == 10  # every position its own augmentation seed
    resumed = take(BatchStream(size=5, batch_size=2, seed=3, stream=1, start_iteration=3), 2)
    assert resumed == keys[6:]
    other_seed = take(BatchStream(size=5, batch_size=2, seed=4, stream=1), 5)
    assert other_seed != keys


def test_batch_stream_ranks_share_one_global_order():
    single = take(BatchStream(size=7, batch_size=2, seed=0, stream=2), batches=4)
    ranks = [take(BatchStream(7, 2, 0, 2, rank=r, world_size=2), batches=2) for r in (0, 1)]
    # iteration k: rank 0 takes global batch 2k, rank 1 global batch 2k+1
    interleaved = ranks[0][:2] + ranks[1][:2] + ranks[0][2:] + ranks[1][2:]
    assert interleaved == single


class RandomItems(torch.utils.data.Dataset):
    """Items made of draws from all three global RNGs."""

    def __getitem__(self, index: int) -> tuple:
        return index, torch.rand(2).tolist(), random.random(), float(np.random.rand())


def test_seeded_items_repeat_and_leave_global_rngs_alone():
    items = SeededItems(RandomItems())
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    first = items[(3, 42)]
    after = (torch.rand(1).item(), random.random(), float(np.random.rand()))
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    assert (torch.rand(1).item(), random.random(), float(np.random.rand())) == after
    assert items[(3, 42)] == first
    assert items[(3, 43)] != first


def test_rng_states_round_trip():
    states = rng_states()
    draws = (torch.rand(3).tolist(), random.random(), np.random.rand(2).tolist())
    set_rng_states(states)
    assert (torch.rand(3).tolist(), random.random(), np.random.rand(2).tolist()) == draws


def test_checkpoint_round_trip(tmp_path: Path):
    model = build_model(load_config(["run_dir=x", "model.mini_width=8"]).model)
    ema_state = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.rand(1, 3, 32, 32)).main.sum().backward()
    optimizer.step()  # creates momentum buffers
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(
        path,
        {
            "model": model.state_dict(),
            "ema": ema_state,
            "optimizer": optimizer.state_dict(),
            "iteration": 7,
            "best_score": 12.5,
        },
    )
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary left over
    loaded = load_checkpoint(path)
    assert loaded["format"] == "hqtd-train-v1"
    assert (loaded["iteration"], loaded["best_score"]) == (7, 12.5)
    assert state_dicts_equal(loaded["model"], model.state_dict())
    restored = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    restored.load_state_dict(loaded["optimizer"])
    momentum = [s["momentum_buffer"] for s in optimizer.state.values()]
    assert len(momentum) == len(restored.state) > 0
    for before, after in zip(momentum, restored.state.values(), strict=True):
        assert torch.equal(before, after["momentum_buffer"])
    # the model engineer's loader takes the EMA weights of a training checkpoint
    fresh = build_model(load_config(["run_dir=x", "model.mini_width=8"]).model)
    load_weights(fresh, path)
    assert state_dicts_equal(fresh.state_dict(), ema_state)


def test_checkpoint_files_of_equal_states_are_byte_identical(tmp_path: Path):
    """The archive inside a torch.save file is named after the file it is saved to: a save to a
    random temporary name would make equal checkpoints differ in their bytes."""
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "iteration": 3}
    payloads = []
    for name in ("a", "b"):  # nothing draws in between: both files hold the same RNG states
        save_checkpoint(tmp_path / name / "last.pt", state)
        payloads.append((tmp_path / name / "last.pt").read_bytes())
    assert payloads[0] == payloads[1]


def test_equal_runs_write_byte_identical_checkpoints(data_root: Path, tmp_path: Path):
    args = ["method=source_only", "train.source_only_iterations=2", "train.eval_every=2"]
    for name in ("a", "b"):
        random.random(), np.random.random()  # whatever the global RNGs held before the run
        train(load_config(run_args(data_root, tmp_path / name, *args)))
    for name in ("last.pt", "best.pt"):
        a, b = (tmp_path / run / "checkpoints" / name for run in ("a", "b"))
        assert a.read_bytes() == b.read_bytes(), name


def test_load_checkpoint_refuses_other_files(tmp_path: Path):
    path = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(HqtdError, match="not an hqtd training checkpoint"):
        load_checkpoint(path)


def test_run_log_resume_hides_what_the_interrupted_attempt_logged_past_its_checkpoint(
    tmp_path: Path,
):
    interrupted = RunLog(tmp_path, start=0, num_classes=19)
    for step in range(1, 7):
        interrupted.train({"iteration": step, "total": float(step)})
        if step == 4:
            interrupted.writer.flush()  # the checkpoint holds 4 iterations
    interrupted.writer.flush()  # iterations 5 and 6 reached the disk before the kill
    truncate_log(tmp_path / "train_log.jsonl", 4)
    resumed = RunLog(tmp_path, start=4, num_classes=19)
    for step in (5, 6):
        resumed.train({"iteration": step, "total": 10.0 * step})
    resumed.writer.close()
    expected = [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 50.0), (6, 60.0)]
    assert tensorboard_scalars(tmp_path)["train/total"] == expected
    totals = [r["total"] for r in read_jsonl(tmp_path / "train_log.jsonl")]
    assert totals == [value for _, value in expected]


def test_truncate_log_drops_entries_after_the_checkpoint_and_partial_lines(tmp_path: Path):
    path = tmp_path / "train_log.jsonl"
    lines = [json.dumps({"iteration": i, "loss": i / 2}) for i in range(1, 6)]
    path.write_text("\n".join(lines) + '\n{"iteration": 6, "lo')
    truncate_log(path, 3)
    assert path.read_text() == "\n".join(lines[:3]) + "\n"


def test_config_differences_name_keys_and_ignore_machine_settings():
    base = load_config(["run_dir=r"])
    same = load_config(["run_dir=r", "train.device=cpu", "train.num_workers=7", "train.threads=3",
                        "train.diagnostics=16"])  # fmt: skip
    assert config_differences(base, same) == []
    other = load_config(["run_dir=r", "seed=1", "method.t_max=0.9", "model.mini_width=24"])
    assert config_differences(base, other) == ["method.t_max", "model.mini_width", "seed"]


def test_best_checkpoint_selected_by_miou13_when_it_exists():
    assert selection_score({"mIoU": 30.0, "mIoU16": 30.0, "mIoU13": 35.0}) == 35.0
    assert selection_score({"mIoU": 30.0, "mIoU19": 30.0}) == 30.0
    assert selection_score({"mIoU": None}) == float("-inf")


# ----------------------------------------------------------------------------------------------
# Runs


def test_source_only_run_writes_the_run_directory(data_root: Path, source_checkpoint: Path):
    run_dir = source_checkpoint.parent.parent
    assert (run_dir / "done").is_file()
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"last.pt", "best.pt"}
    config = load_config(run_args(data_root, run_dir, "method=source_only"))
    log = read_jsonl(run_dir / "train_log.jsonl")
    assert [r["iteration"] for r in log] == [1, 2, 3, 4]
    assert set(log[0]) == {"iteration", "lr", "ce", "ce_aux", "total"}
    # backbone lr of iteration i (logged at i+1) follows the poly schedule of 4 iterations
    expected = [poly_lr(config.train.lr, i, 4, 0.9) for i in range(4)]
    assert [r["lr"] for r in log] == pytest.approx(expected)
    val = read_jsonl(run_dir / "val_log.jsonl")
    assert [r["iteration"] for r in val] == [2, 4]
    assert len(val[0]["iou"]) == 19 and "mIoU19" in val[0]
    last = load_checkpoint(source_checkpoint)
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert last["iteration"] == 4
    assert best["best_score"] == max(r["mIoU"] for r in val)
    assert best["iteration"] == max(val, key=lambda r: r["mIoU"])["iteration"]
    scalars = tensorboard_scalars(run_dir)
    assert scalars["train/total"] == [(r["iteration"], pytest.approx(r["total"])) for r in log]
    assert scalars["val/mIoU"] == [(r["iteration"], pytest.approx(r["mIoU"])) for r in val]
    assert scalars["val_iou/sky"] == [(r["iteration"], pytest.approx(r["iou"][10])) for r in val]


def test_adaptation_is_deterministic_and_evaluates_both_protocols(
    data_root: Path, source_checkpoint: Path, tmp_path: Path
):
    outputs = []
    for name in ("a", "b"):
        run_dir = tmp_path / name
        train(load_config(adapt_args(data_root, run_dir, source_checkpoint)))
        evaluate_command([f"run_dir={run_dir}"])
        evaluate_command([f"run_dir={run_dir}", "protocol=strict"])
        outputs.append(run_dir)
    a, b = outputs
    for name in (
        "train_log.jsonl",
        "val_log.jsonl",
        "eval/paper/metrics.json",
        "eval/strict/metrics.json",
    ):
        assert (a / name).read_text() == (b / name).read_text(), name
    assert set(read_jsonl(a / "train_log.jsonl")[0]) >= {
        "src",
        "st",
        "mix",
        "pix",
        "proto",
        "total",
    }

    paper = json.loads((a / "eval/paper/metrics.json").read_text())
    strict = json.loads((a / "eval/strict/metrics.json").read_text())
    assert set(paper) == METRICS_KEYS | {"mIoU19"}
    assert paper["protocol"] == {"name": "paper", "label_size": "64x32", "checkpoint": "best"}
    assert strict["protocol"] == {"name": "strict", "label_size": "full", "checkpoint": "last"}
    assert strict["iteration"] == 6
    assert paper["weights"] == {"requested": "auto", "entry": "ema"}
    assert (paper["benchmark"], paper["method"], paper["seed"]) == ("mini_gta5", "full", 0)
    assert len(paper["class_names"]) == len(paper["iou"]) == 19
    # the numbers are the percentages of the saved confusion matrix
    conf = np.load(a / "eval/strict/confusion.npy")
    assert conf.dtype == np.int64 and conf.shape == (19, 19)
    val = SegmentationDataset(data_root / "prepared/mini_cityscapes", "val", None, 19, train=False)
    assert conf.sum() == sum(int((item["label"] != 255).sum()) for item in val)  # full size
    assert strict["mIoU"] == pytest.approx(100 * summary(conf)["mIoU"])
    # per-image counts of the same pass: they sum to the matrix; one row per val image
    per_image = np.load(a / "eval/strict/per_image.npz")
    assert per_image["iou_intersection"].shape == (len(val), 19)
    np.testing.assert_array_equal(per_image["iou_intersection"].sum(0), np.diag(conf))
    assert set(strict["trimap_mIoU"]) == {"4", "8", "16"}
    assert paper["boundary_px"] == 1  # 0.02 x the 64x32 diagonal = 1.4
    low, high = paper["intervals"]["mIoU"]
    assert low <= paper["mIoU"] <= high and paper["intervals"]["draws"] == 1000
    # paper metrics of the best checkpoint equal its periodic validation entry
    best = max(read_jsonl(a / "val_log.jsonl"), key=lambda r: r["mIoU"])
    assert paper["mIoU"] == pytest.approx(best["mIoU"])
    assert paper["iou"] == pytest.approx(best["iou"], nan_ok=True)


def test_diagnostics_leave_training_byte_identical(
    data_root: Path, source_checkpoint: Path, tmp_path: Path, capsys
):
    """Issue 14: pseudo-label diagnostics at each validation change nothing that training writes;
    they are logged in val_log.jsonl and TensorBoard; turning them on needs no retraining."""
    for name, diagnostics in (("off", 0), ("on", 3)):
        random.random(), np.random.random()  # whatever the global RNGs held before the run
        # T_max near the median confidence of the 6-iteration network: a mask with boundaries
        args = adapt_args(data_root, tmp_path / name, source_checkpoint, "method.t_max=0.75",
                          f"train.diagnostics={diagnostics}")  # fmt: skip
        train(load_config(args))
    off, on = tmp_path / "off", tmp_path / "on"
    for name in ("train_log.jsonl", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (off / name).read_bytes() == (on / name).read_bytes(), name
    val_off, val_on = read_jsonl(off / "val_log.jsonl"), read_jsonl(on / "val_log.jsonl")
    assert [r["iteration"] for r in val_on] == [3, 6]
    assert [{k: v for k, v in r.items() if k != "diagnostics"} for r in val_on] == val_off
    fractions = {"pseudo_label_accuracy", "coverage", "paste_precision",
                 "paste_precision_boundary"}  # fmt: skip
    per_class = {"mask_precision", "mask_coverage", "paste_share"}
    for record in val_on:
        diag = record["diagnostics"]
        assert set(diag) == fractions | per_class
        assert all(0 <= diag[k] <= 1 for k in fractions) and diag["coverage"] > 0
        for key in per_class:
            assert len(diag[key]) == 19
            assert all(v is None or 0 <= v <= 1 for v in diag[key])
        assert sum(v for v in diag["paste_share"] if v is not None) == pytest.approx(1)
    scalars = tensorboard_scalars(on)
    accuracy = [(r["iteration"], pytest.approx(r["diagnostics"]["pseudo_label_accuracy"]))
                for r in val_on]  # fmt: skip
    assert scalars["diag/pseudo_label_accuracy"] == accuracy
    assert any(tag.startswith("diag_mask_coverage/") for tag in scalars)
    # a finished run with diagnostics switched on is the same computation: nothing to retrain
    capsys.readouterr()
    args = adapt_args(data_root, off, source_checkpoint, "method.t_max=0.75", "train.diagnostics=3")
    train(load_config(args))
    assert "run complete, nothing to do" in capsys.readouterr().out


def test_authors_augmentation_resizes_bicubic_and_runs_to_evaluation(
    data_root: Path, source_checkpoint: Path, tmp_path: Path
):
    authors = load_config(adapt_args(data_root, tmp_path, source_checkpoint,
                                     "method.augmentation=authors"))  # fmt: skip
    default = load_config(adapt_args(data_root, tmp_path, source_checkpoint))
    for dataset in stage_datasets(authors):
        assert dataset.image_resample is Image.Resampling.BICUBIC
    for dataset in stage_datasets(default):
        assert dataset.image_resample is Image.Resampling.BILINEAR
    train(replace(authors, train=replace(authors.train, iterations=2, eval_every=2)))
    evaluate_command([f"run_dir={tmp_path}"])
    assert "authors" in (tmp_path / "config.yaml").read_text()
    assert json.loads((tmp_path / "eval/paper/metrics.json").read_text())["iteration"] == 2


def test_sixteen_class_runs_report_miou16_and_miou13(data_root: Path, tmp_path: Path):
    args = ["benchmark=mini_synthia", "method=source_only", "train.source_only_iterations=2"]
    train(load_config(run_args(data_root, tmp_path, *args)))
    evaluate_command([f"run_dir={tmp_path}"])
    metrics = json.loads((tmp_path / "eval/paper/metrics.json").read_text())
    assert set(metrics) == METRICS_KEYS | {"mIoU16", "mIoU13"}
    assert metrics["num_classes"] == 16 and len(metrics["iou"]) == 16
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert best["best_score"] == pytest.approx(read_jsonl(tmp_path / "val_log.jsonl")[-1]["mIoU13"])


def test_metrics_record_where_they_were_made(data_root: Path, source_checkpoint: Path):
    run_dir = source_checkpoint.parent.parent
    evaluate_command([f"run_dir={run_dir}", "protocol=strict", "train.device=cpu"])
    metrics = json.loads((run_dir / "eval/strict/metrics.json").read_text())
    recorded = metrics["provenance"]
    assert set(recorded) == set(hqtd.provenance.KEYS)
    # the last commit of the package or params/ (run from the package folder)
    head = subprocess.run(["git", "log", "-1", "--format=%H", "--", ".", "../params"],
                          capture_output=True, text=True,
                          cwd=Path(hqtd.__file__).parent).stdout.strip()  # fmt: skip
    assert recorded["git_revision"] == metrics["git_revision"] == head
    assert recorded["git_dirty"] in (True, False)
    assert recorded["torch_version"] == torch.__version__
    assert recorded["threads"] == 1  # train.threads=1 of the run's config
    assert recorded["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    # the mini benchmarks run portable (the test process is pinned like the hqtd command)
    assert recorded["device"] and recorded["determinism"] == "portable"
    assert {k: recorded[k] for k in PORTABLE_ENV} == PORTABLE_ENV
    manifests = {
        str(data_root / "prepared" / name / "manifest.json")
        for name in ("mini_gta5", "mini_cityscapes")
    }
    assert set(metrics["data_manifests"]) == manifests
    for path, digest in metrics["data_manifests"].items():
        assert digest == hashlib.sha256(Path(path).read_bytes()).hexdigest()
    assert len(recorded["data"]) == 64


def test_oracle_trains_on_target_labels(data_root: Path, tmp_path: Path):
    args = ["method=oracle", "train.source_only_iterations=2", "train.eval_every=2"]
    train(load_config(run_args(data_root, tmp_path, *args)))
    assert [r["iteration"] for r in read_jsonl(tmp_path / "train_log.jsonl")] == [1, 2]
    assert (tmp_path / "done").is_file()


def test_bf16_and_channels_last_run_on_cpu(data_root: Path, tmp_path: Path):
    args = ["method=source_only", "train.source_only_iterations=2", "train.eval_every=2"]
    fast = ["train.precision=bf16", "train.channels_last=true"]
    train(load_config(run_args(data_root, tmp_path, *args, *fast)))
    log = read_jsonl(tmp_path / "train_log.jsonl")
    assert all(np.isfinite(r["total"]) for r in log) and len(log) == 2
    assert read_jsonl(tmp_path / "val_log.jsonl")[0]["mIoU"] is not None


def test_rerun_of_a_finished_run_does_nothing(data_root: Path, source_checkpoint: Path, capsys):
    run_dir = source_checkpoint.parent.parent
    before = source_checkpoint.stat().st_mtime_ns
    args = ["method=source_only", "train.source_only_iterations=4", "train.eval_every=2"]
    train(load_config(run_args(data_root, run_dir, *args)))
    assert "run complete" in capsys.readouterr().out
    assert source_checkpoint.stat().st_mtime_ns == before


def test_non_finite_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    calls = []

    def poisoned_step(model: nn.Module, batch: dict, aux_weight: float) -> StepResult:
        result = hqtd.adapt.step.supervised_step(model, batch, aux_weight)
        calls.append(1)
        if len(calls) < 3:
            return result
        return StepResult(result.loss * float("nan"), {**result.terms, "ce": float("nan")})

    monkeypatch.setattr(hqtd.train, "supervised_step", poisoned_step)
    args = ["method=source_only", "train.source_only_iterations=5", "train.checkpoint_every=1"]
    with pytest.raises(HqtdError, match=r"iteration 3: non-finite loss \(ce\)"):
        train(load_config(run_args(data_root, tmp_path, *args)))
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["iteration"] == 2
    assert not (tmp_path / "done").exists()


# ----------------------------------------------------------------------------------------------
# Resume only the same computation (config, code, data, initial weights)

SHORT_SOURCE_ONLY = ("method=source_only", "train.source_only_iterations=4",
                     "train.checkpoint_every=2", "train.eval_every=2")  # fmt: skip


def counted_steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the supervised steps the loop takes (a resume at 2 of 4 takes 2, a restart 4)."""
    calls: list[int] = []

    def step(model: nn.Module, batch: dict, aux_weight: float) -> StepResult:
        calls.append(1)
        return hqtd.adapt.step.supervised_step(model, batch, aux_weight)

    monkeypatch.setattr(hqtd.train, "supervised_step", step)
    return calls


def interrupted_run(data_root: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A short source-only run killed right after its checkpoint at iteration 2 of 4."""
    save = hqtd.training.run_log.save_checkpoint

    def save_then_die(path: Path, state: dict) -> None:
        save(path, state)
        if path.name == "last.pt":
            raise KeyboardInterrupt

    monkeypatch.setattr(hqtd.training.run_log, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(load_config(run_args(data_root, run_dir, *SHORT_SOURCE_ONLY)))
    monkeypatch.setattr(hqtd.training.run_log, "save_checkpoint", save)
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["iteration"] == 2


def other_code(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if a file that hqtd.train imports had been edited (its fingerprint changes)."""
    monkeypatch.setattr(hqtd.provenance, "code_fingerprint", lambda entry: "edited " + entry)


def test_same_computation_resumes(data_root: Path, tmp_path: Path, monkeypatch, capsys):
    interrupted_run(data_root, tmp_path, monkeypatch)
    recorded = json.loads((tmp_path / "provenance.json").read_text())
    assert recorded["code"] == hqtd.codedeps.code_fingerprint("hqtd.train")
    manifest = data_root / "prepared" / "mini_cityscapes" / "manifest.json"
    assert recorded["data"][str(manifest)] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    steps = counted_steps(monkeypatch)
    args = run_args(data_root, tmp_path, *SHORT_SOURCE_ONLY, "train.num_workers=0")
    train(load_config(args))
    assert len(steps) == 2  # iterations 3 and 4 only
    assert [r["iteration"] for r in read_jsonl(tmp_path / "train_log.jsonl")] == [1, 2, 3, 4]
    train(load_config(args))
    assert "run complete, nothing to do" in capsys.readouterr().out
    assert len(steps) == 2


def test_changed_code_data_or_config_is_refused_in_one_line(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    data = tmp_path / "data"
    shutil.copytree(data_root, data)  # prepared images point into raw/
    run_dir = tmp_path / "run"
    interrupted_run(data, run_dir, monkeypatch)
    before = (run_dir / "checkpoints" / "last.pt").read_bytes()
    args = ["train", *run_args(data, run_dir, *SHORT_SOURCE_ONLY)]
    with monkeypatch.context() as patch:
        other_code(patch)
        err = cli_error(capsys, args)
    assert "unfinished run of other code;" in err and "train.on_change=restart" in err
    manifest = data / "prepared" / "mini_gta5" / "manifest.json"
    manifest.write_text(manifest.read_text() + "\n")  # other bytes, other hash
    err = cli_error(capsys, [*args, "seed=3"])
    assert f"other seed, data {manifest};" in err
    assert (run_dir / "checkpoints" / "last.pt").read_bytes() == before  # nothing touched


def test_restart_trains_again_from_scratch(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    interrupted_run(data_root, tmp_path, monkeypatch)
    other_code(monkeypatch)
    steps = counted_steps(monkeypatch)
    train(load_config(run_args(data_root, tmp_path, *SHORT_SOURCE_ONLY, "train.on_change=restart")))
    assert "other code; training again from scratch" in capsys.readouterr().out
    assert len(steps) == 4
    recorded = json.loads((tmp_path / "provenance.json").read_text())
    assert recorded["code"] == "edited hqtd.train"


def test_finished_run_under_new_code_is_not_left_as_done(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    """What `dvc repro` does after an edit of hqtd/train.py: it deletes `done` and runs the
    stage's command (with restart); by hand, without restart, the finished run is refused."""
    args = run_args(data_root, tmp_path, *SHORT_SOURCE_ONLY)
    train(load_config(args))
    other_code(monkeypatch)
    err = cli_error(capsys, ["train", *args])
    assert "holds a finished run of other code" in err
    (tmp_path / "done").unlink()
    steps = counted_steps(monkeypatch)
    train(load_config([*args, "train.on_change=restart"]))
    assert len(steps) == 4 and (tmp_path / "done").exists()


def test_run_without_recorded_provenance_is_unknown(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    """A run directory from before hqtd recorded provenance.json (the committed results)."""
    args = run_args(data_root, tmp_path, *SHORT_SOURCE_ONLY)
    train(load_config(args))
    (tmp_path / "provenance.json").unlink()
    assert "code and data unknown (no provenance.json)" in cli_error(capsys, ["train", *args])
    steps = counted_steps(monkeypatch)
    train(load_config([*args, "train.on_change=restart"]))
    assert len(steps) == 4 and (tmp_path / "provenance.json").exists()


@pytest.mark.slow
def test_edited_training_code_in_a_copy_of_the_package_is_trained_again(
    data_root: Path, tmp_path: Path
):
    """End to end, with a real edit: a copy of the package whose poly schedule is halved."""
    copy = tmp_path / "repo"
    shutil.copytree(
        Path(hqtd.__file__).parent, copy / "hqtd", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(Path(hqtd.config.PARAMS_DIR), copy / "params")
    run_dir = tmp_path / "run"
    args = ["train", *run_args(data_root, run_dir, *SHORT_SOURCE_ONLY, "train.on_change=restart")]
    env = {**quiet_env(), "PYTHONPATH": str(copy)}
    subprocess.run(hqtd_command(*args), env=env, check=True, capture_output=True, cwd=tmp_path)
    first = [r["lr"] for r in read_jsonl(run_dir / "train_log.jsonl")]
    schedule_py = copy / "hqtd" / "training" / "schedule.py"
    schedule = "return base_lr * (1.0 - iteration / total) ** power"
    assert schedule in schedule_py.read_text()
    schedule_py.write_text(schedule_py.read_text().replace(schedule, schedule + " * 0.5"))
    (run_dir / "done").unlink()  # what a DAG does before rerunning the job
    done = subprocess.run(
        hqtd_command(*args), env=env, check=True, capture_output=True, text=True, cwd=tmp_path
    )
    assert "training again from scratch" in done.stdout
    assert [r["lr"] for r in read_jsonl(run_dir / "train_log.jsonl")] == pytest.approx(
        [lr * 0.5 for lr in first]
    )


# ----------------------------------------------------------------------------------------------
# User mistakes through the command line: exit status 2 and one line


def cli_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_cli_mistakes_exit_2_with_one_line(
    data_root: Path, source_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):
    assert "train.iterationz" in cli_error(capsys, ["train", "run_dir=r", "train.iterationz=3"])
    missing = tmp_path / "nope.pt"
    err = cli_error(capsys, ["train", *adapt_args(data_root, tmp_path / "a", missing)])
    assert str(missing) in err and "not found" in err
    args = run_args(data_root, tmp_path / "a", "method=full")
    assert "train.init_checkpoint" in cli_error(capsys, ["train", *args])
    args = run_args(
        data_root, tmp_path / "o", "benchmark=gta5", "method=oracle", "model.init=scratch"
    )
    assert "mini" in cli_error(capsys, ["train", *args])
    # a source-only checkpoint of another width does not fit the model
    wide = adapt_args(data_root, tmp_path / "w", source_checkpoint, "model.mini_width=16")
    assert str(source_checkpoint) in cli_error(capsys, ["train", *wide])
    # a run directory holding another configuration is not resumed
    run_dir = source_checkpoint.parent.parent
    args = run_args(data_root, run_dir, "method=source_only", "train.source_only_iterations=9")
    (run_dir / "done").rename(run_dir / "done.bak")
    try:
        assert "train.source_only_iterations" in cli_error(capsys, ["train", *args])
    finally:
        (run_dir / "done.bak").rename(run_dir / "done")
    assert "config.yaml" in cli_error(capsys, ["evaluate", f"run_dir={tmp_path / 'none'}"])
    err = cli_error(capsys, ["evaluate", f"run_dir={run_dir}", f"checkpoint={missing}"])
    assert str(missing) in err
    assert "strcit" in cli_error(capsys, ["evaluate", f"run_dir={run_dir}", "protocol=strcit"])


# ----------------------------------------------------------------------------------------------
# Crash safety and scale-out (subprocesses)


def hqtd_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "hqtd.cli", *args]


def quiet_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(
    data_root: Path, source_checkpoint: Path, tmp_path: Path
):
    extra = ("train.iterations=40", "train.checkpoint_every=5", "train.eval_every=10")
    reference = tmp_path / "reference"
    train(load_config(adapt_args(data_root, reference, source_checkpoint, *extra)))

    killed = tmp_path / "killed"
    command = hqtd_command("train", *adapt_args(data_root, killed, source_checkpoint, *extra))
    process = subprocess.Popen(command, env=quiet_env(), stderr=subprocess.DEVNULL)
    last = killed / "checkpoints" / "last.pt"
    while not last.exists() and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "done").exists(), "the run finished before it could be killed"
    assert load_checkpoint(last)["iteration"] < 40

    subprocess.run(command, env=quiet_env(), check=True, stderr=subprocess.DEVNULL)
    for name in ("train_log.jsonl", "val_log.jsonl"):
        assert (killed / name).read_text() == (reference / name).read_text(), name
    # Two event files (one per attempt); what the first wrote after its checkpoint is purged.
    assert len(list((killed / "tensorboard").iterdir())) == 2
    assert tensorboard_scalars(killed) == tensorboard_scalars(reference)
    for name in ("last.pt", "best.pt"):  # byte-identical, not only equal tensors
        a, b = (d / "checkpoints" / name for d in (reference, killed))
        assert a.read_bytes() == b.read_bytes(), name
    for run_dir in (reference, killed):
        evaluate_command([f"run_dir={run_dir}", "protocol=strict"])
    metrics = [(d / "eval/strict/metrics.json").read_text() for d in (reference, killed)]
    assert metrics[0] == metrics[1]


@pytest.mark.slow
def test_two_process_ddp_run_on_cpu(data_root: Path, source_checkpoint: Path, tmp_path: Path):
    torchrun = Path(sys.executable).parent / "torchrun"
    args = adapt_args(data_root, tmp_path, source_checkpoint, "train.iterations=4")
    command = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "hqtd.cli",
        "train",
        *args,
    ]
    subprocess.run(command, env=quiet_env(), check=True, capture_output=True)
    assert (tmp_path / "done").is_file()
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["iteration"] == 4
    assert [r["iteration"] for r in read_jsonl(tmp_path / "val_log.jsonl")] == [3, 4]
    evaluate_command([f"run_dir={tmp_path}"])
    assert (tmp_path / "eval/paper/metrics.json").is_file()
