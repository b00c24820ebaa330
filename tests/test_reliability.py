"""Issue 13: damaged or concurrent state is caught, bad input ends in one line, nothing is left
half-written. Each case asserts the exit status, the single line without a traceback, and that
nothing was lost or left behind."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from raw_datasets import make_gta5
from test_dag import BIN
from test_paper_grid import workdir

# The tiny prepared mini benchmark fixture of test_train.
from test_train import (
    SHORT_SOURCE_ONLY,
    data_root,  # noqa: F401
    interrupted_run,
    read_jsonl,
    run_args,
)

from hqtd.cli import main
from hqtd.config import load_config
from hqtd.data.datasets import SegmentationDataset
from hqtd.errors import HqtdError
from hqtd.io import plain_file_mode, sweep_temporaries, write_text
from hqtd.models.checkpoints import load_checkpoint, save_checkpoint
from hqtd.train import train
from hqtd.training.run_dir import LOCK_FILE, run_dir_lock


def one_line_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """Run the command: exit status 2 and exactly one line on stderr, without a traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def flip_tensor_byte(path: Path) -> None:
    """Invert one byte in the middle of the largest tensor record of a torch.save zip file (the
    records are stored uncompressed, so the file still unpickles)."""
    with zipfile.ZipFile(path) as archive:
        record = max(
            (i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size
        )
    raw = bytearray(path.read_bytes())
    header = record.header_offset
    name_length, extra_length = struct.unpack("<HH", raw[header + 26 : header + 30])
    raw[header + 30 + name_length + extra_length + record.file_size // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# ----------------------------------------------------------------------------------------------
# Checkpoints


def test_checksum_catches_a_flipped_byte_and_leaves_the_tensors_unchanged(tmp_path: Path):
    state = {"model": {"w": torch.arange(4096.0)}, "iteration": 3}
    path = tmp_path / "last.pt"
    save_checkpoint(path, state)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.arange(4096.0))
    flip_tensor_byte(path)
    assert torch.load(path, weights_only=True)["iteration"] == 3  # torch itself does not notice
    with pytest.raises(HqtdError, match=r"last\.pt: damaged checkpoint"):
        load_checkpoint(path)


@pytest.fixture(scope="module")
def uninterrupted(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """The run directory of SHORT_SOURCE_ONLY trained without interruption."""
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    train(load_config(run_args(data_root, run_dir, *SHORT_SOURCE_ONLY, "train.num_workers=0")))
    return run_dir


def test_damaged_last_checkpoint_resumes_from_best_to_the_uninterrupted_result(
    data_root: Path,  # noqa: F811
    uninterrupted: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
):
    args = [*SHORT_SOURCE_ONLY, "train.num_workers=0"]
    run_dir = tmp_path / "run"
    interrupted_run(data_root, run_dir, monkeypatch)  # last.pt and best.pt at iteration 2
    flip_tensor_byte(run_dir / "checkpoints" / "last.pt")
    capsys.readouterr()
    assert main(["train", *run_args(data_root, run_dir, *args)]) == 0
    out = capsys.readouterr().out
    assert "last.pt: damaged checkpoint" in out and "resuming from" in out and "best.pt" in out
    assert [r["iteration"] for r in read_jsonl(run_dir / "train_log.jsonl")] == [1, 2, 3, 4]
    for name in ("last.pt", "best.pt"):  # byte-identical to the run that was never interrupted
        a, b = (d / "checkpoints" / name for d in (uninterrupted, run_dir))
        assert a.read_bytes() == b.read_bytes(), name


def test_resumed_checkpoints_are_byte_identical_to_uninterrupted_ones(
    data_root: Path,  # noqa: F811
    uninterrupted: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    args = [*SHORT_SOURCE_ONLY, "train.num_workers=0"]
    run_dir = tmp_path / "run"
    interrupted_run(data_root, run_dir, monkeypatch)
    train(load_config(run_args(data_root, run_dir, *args)))
    for name in ("last.pt", "best.pt"):
        a, b = (d / "checkpoints" / name for d in (uninterrupted, run_dir))
        assert a.read_bytes() == b.read_bytes(), name


@pytest.mark.parametrize("damage", [b"", b"not a checkpoint\n"], ids=["empty", "text"])
def test_unreadable_last_checkpoint_without_fallback_says_what_to_delete(
    data_root: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    damage: bytes,
):
    interrupted_run(data_root, tmp_path, monkeypatch)
    (tmp_path / "checkpoints" / "best.pt").unlink()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(damage)
    before = tree(tmp_path)
    err = one_line_error(capsys, ["train", *run_args(data_root, tmp_path, *SHORT_SOURCE_ONLY)])
    assert f"{tmp_path / 'checkpoints' / 'last.pt'}: unreadable checkpoint" in err
    assert f"delete {tmp_path / 'checkpoints'}" in err
    assert tree(tmp_path) == before  # nothing changed, nothing lost


def test_orphan_temporaries_are_swept_on_the_next_start(
    data_root: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    interrupted_run(data_root, tmp_path, monkeypatch)
    orphans = [tmp_path / "checkpoints" / ".last.pt.x1.tmp", tmp_path / ".config.yaml.x2.tmp"]
    for orphan in orphans:
        orphan.write_bytes(b"half a file")
    train(load_config(run_args(data_root, tmp_path, *SHORT_SOURCE_ONLY)))
    assert not any(orphan.exists() for orphan in orphans)
    assert (tmp_path / "done").exists()


# ----------------------------------------------------------------------------------------------
# The run directory lock


def test_second_train_on_a_locked_run_dir_names_the_holder(
    data_root: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
):
    args = run_args(data_root, tmp_path, *SHORT_SOURCE_ONLY)
    with run_dir_lock(tmp_path):  # as if another hqtd train were at work here
        err = one_line_error(capsys, ["train", *args])
        assert f"pid {os.getpid()} on host" in err and "in use by" in err
        assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_FILE]  # nothing written
    assert not (tmp_path / LOCK_FILE).exists()  # released and removed


def test_stale_lock_of_a_dead_process_is_taken_over(
    data_root: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
):
    (tmp_path / LOCK_FILE).write_text("hqtd train pid 999999 on host gone\n")  # its holder died
    assert main(["train", *run_args(data_root, tmp_path, *SHORT_SOURCE_ONLY)]) == 0
    assert "taking over the lock of hqtd train pid 999999 on host gone" in capsys.readouterr().out
    assert (tmp_path / "done").exists() and not (tmp_path / LOCK_FILE).exists()


def test_refused_start_leaves_no_run_dir_behind(
    data_root: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
):
    run_dir = tmp_path / "new"
    err = one_line_error(capsys, ["train", *run_args(data_root, run_dir, "method=full")])
    assert "train.init_checkpoint" in err and not run_dir.exists()


# ----------------------------------------------------------------------------------------------
# Messages and evaluation of unfinished runs


def test_diverging_run_does_not_claim_a_checkpoint_it_never_wrote(
    data_root: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
):
    args = ["method=source_only", "train.source_only_iterations=6", "train.lr=1e6",
            "train.checkpoint_every=6", "train.eval_every=6"]  # fmt: skip
    err = one_line_error(capsys, ["train", *run_args(data_root, tmp_path, *args)])
    assert "non-finite loss" in err and "no checkpoint was written yet" in err
    assert "is kept" not in err and not (tmp_path / "checkpoints").exists()


def test_evaluating_an_unfinished_run_says_so_and_records_it(
    data_root: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
):
    interrupted_run(data_root, tmp_path, monkeypatch)
    capsys.readouterr()
    assert main(["evaluate", f"run_dir={tmp_path}", "protocol=strict"]) == 0
    assert "unfinished run (no done marker), scored at iteration 2" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "eval" / "strict" / "metrics.json").read_text())
    assert metrics["run_finished"] is False and metrics["iteration"] == 2


# ----------------------------------------------------------------------------------------------
# Files


def test_atomic_writes_get_the_mode_of_a_plain_write(tmp_path: Path):
    old = os.umask(0o027)
    try:
        write_text(tmp_path / "atomic.txt", "x")
        (tmp_path / "plain.txt").write_text("x")
        assert plain_file_mode() == 0o640
    finally:
        os.umask(old)
    modes = [stat.S_IMODE((tmp_path / name).stat().st_mode) for name in ("atomic.txt", "plain.txt")]
    assert modes[0] == modes[1] == 0o640


def test_sweep_deletes_only_atomic_temporaries(tmp_path: Path):
    (tmp_path / ".a.png.k3j.tmp").write_bytes(b"")
    (tmp_path / "keep.tmp").write_bytes(b"")  # not an atomic_path name (no leading dot)
    (tmp_path / "keep.png").write_bytes(b"")
    assert sweep_temporaries(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.png", "keep.tmp"]


def test_run_dir_below_a_file_is_one_line(
    data_root: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
):
    blocker = tmp_path / "runs"
    blocker.write_text("a file where a folder should be\n")
    err = one_line_error(capsys, ["train", *run_args(data_root, blocker / "a", *SHORT_SOURCE_ONLY)])
    assert str(blocker / "a") in err and "cannot write here" in err
    assert blocker.read_text() == "a file where a folder should be\n"


# ----------------------------------------------------------------------------------------------
# Manifests, checked when a dataset is opened


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ([], "split 'train' lists no samples"),
        ([{"id": "a", "image": "images/a.png"}], "entry 0 has no label"),
        ([{"id": "a", "image": "a.png", "label": "a.png"}, "b"], "entry 1 has no id, image, label"),
    ],
    ids=["empty split", "no label", "not an object"],
)
def test_bad_manifest_entries_fail_when_the_dataset_opens(
    tmp_path: Path, entries: list, expected: str
):
    (tmp_path / "manifest.json").write_text(json.dumps({"splits": {"train": entries}}))
    with pytest.raises(HqtdError, match=expected) as info:
        SegmentationDataset(tmp_path, "train", None, 19, train=True)
    assert str(tmp_path / "manifest.json") in str(info.value)


def test_manifest_without_label_stops_train_before_anything_is_written(
    data_root: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
):
    data = tmp_path / "data"
    shutil.copytree(data_root / "prepared", data / "prepared")
    manifest_path = data / "prepared" / "mini_gta5" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["splits"]["train"][1]["label"]
    manifest_path.write_text(json.dumps(manifest))
    run_dir = tmp_path / "run"
    args = [f"data_root={data}", f"run_dir={run_dir}", *run_args(data_root, run_dir)[2:]]
    err = one_line_error(capsys, ["train", *args, *SHORT_SOURCE_ONLY])
    assert f"{manifest_path}: split 'train' entry 1 has no label" in err
    assert not run_dir.exists()  # nothing written, not even config.yaml


# ----------------------------------------------------------------------------------------------
# Output folders that cannot be written


def test_synth_out_below_a_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture):
    blocker = tmp_path / "afile"
    blocker.write_text("x\n")
    err = one_line_error(capsys, ["synth", "--out", str(blocker / "raw")])
    assert str(blocker / "raw") in err and "cannot write here (Not a directory)" in err
    assert blocker.read_text() == "x\n"


def test_tables_out_below_a_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture):
    runs = Path(__file__).parent.parent / "results" / "runs" / "demo"
    blocker = tmp_path / "afile"
    blocker.write_text("x\n")
    err = one_line_error(capsys, ["tables", "--runs", str(runs), "--out", str(blocker / "t")])
    assert str(blocker / "t") in err and "cannot write here" in err


@pytest.mark.parametrize("command", ["synth", "prepare", "tables"])
def test_out_pointing_at_a_file_is_one_line(
    data_root: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    command: str,
):
    out = tmp_path / "afile"
    out.write_text("x\n")
    runs = Path(__file__).parent.parent / "results" / "runs" / "demo"
    inputs = {
        "synth": [],
        "prepare": ["gta5", "--root", str(data_root / "raw" / "mini_gta5"), "--workers", "1"],
        "tables": ["--runs", str(runs)],
    }[command]
    err = one_line_error(capsys, [command, *inputs, "--out", str(out)])
    assert "cannot write here" in err
    assert f"(a file is in the way: {out})" in err or f"{out}/" in err and "Not a directory" in err
    assert out.read_text() == "x\n" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


#: prctl(2) option and the capabilities that let root write into any folder and read any file.
PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2
libc = ctypes.CDLL(None, use_errno=True)


def without_root_file_access() -> None:
    """``preexec_fn`` for a test run as root (as CI runs): drop the capabilities that bypass file
    permissions from the bounding set, so the ``hqtd`` it executes stays root (it may read its
    interpreter in /root and the tests' private tmp folders) but meets read-only folders as any
    user does. Dropped from the bounding set, they cannot come back across ``execve``. (libc is
    loaded by the parent: the forked child only calls into it.)"""
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"prctl(PR_CAPBSET_DROP, {capability}) failed")


def hqtd_one_line_error(*args: str) -> str:
    """Run ``hqtd ARGS`` in a subprocess that read-only folders stop, root or not: exit status 2
    and exactly one line on stderr, without a traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "hqtd.cli", *args],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        preexec_fn=without_root_file_access if os.geteuid() == 0 else None,
        capture_output=True,
        text=True,
        check=False,
    )
    err = result.stderr.strip()
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def read_only() -> Iterator[Callable[..., None]]:
    """``read_only(*folders)`` makes folders read-only (mode 0555) until the test ends."""
    folders: list[Path] = []

    def make(*paths: Path) -> None:
        for folder in paths:
            folder.chmod(0o555)
            folders.append(folder)

    yield make
    for folder in folders:
        folder.chmod(0o755)


def test_read_only_run_and_eval_folders_are_one_line(
    data_root: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    read_only: Callable[..., None],
):
    interrupted_run(data_root, tmp_path, monkeypatch)
    before = tree(tmp_path)
    read_only(tmp_path, tmp_path / "checkpoints")
    err = hqtd_one_line_error("train", *run_args(data_root, tmp_path, *SHORT_SOURCE_ONLY))
    assert "cannot write here" in err and str(tmp_path) in err
    err = hqtd_one_line_error("evaluate", f"run_dir={tmp_path}", "protocol=strict")
    assert "cannot write here" in err and str(tmp_path / "eval") in err
    assert tree(tmp_path) == before  # nothing written, nothing lost


def test_read_only_prepare_and_tables_folders_are_one_line(
    data_root: Path,  # noqa: F811
    tmp_path: Path,
    read_only: Callable[..., None],
):
    prepared, tables = tmp_path / "prepared", tmp_path / "tables"
    for folder in (prepared, tables):
        folder.mkdir()
    read_only(prepared, tables)
    raw = data_root / "raw" / "mini_gta5"
    err = hqtd_one_line_error("prepare", "gta5", "--root", str(raw), "--out", str(prepared))
    assert "cannot write here" in err and str(prepared) in err
    runs = Path(__file__).parent.parent / "results" / "runs" / "demo"
    err = hqtd_one_line_error("tables", "--runs", str(runs), "--out", str(tables))
    assert "cannot write here" in err and str(tables) in err
    assert not any(prepared.iterdir()) and not any(tables.iterdir())


# ----------------------------------------------------------------------------------------------
# Workflow recovery: a killed Snakemake, then the README's "After a crash" commands


@pytest.mark.slow
def test_rerun_incomplete_prepare_resumes_its_converted_files(tmp_path: Path):
    """The real Snakemake, killed (with its job) while `hqtd prepare` converts: the converted labels
    survive, and `--unlock` then `--rerun-incomplete` converts only the rest."""
    samples = 300  # 16x16 each: enough conversion time to kill the job in the middle
    data = tmp_path / "data"
    make_gta5(data / "raw" / "gta5", n=samples)
    (tmp_path / "work").mkdir()
    work = workdir(tmp_path / "work")
    target = data / "prepared" / "gta5" / "manifest.json"
    labels = target.parent / "labels" / "train"
    config = ["grid=paper", f"data_root={data}", "overrides=model.init=scratch"]  # no ImageNet file
    snakemake = [BIN / "snakemake", "--cores", "1", "--config", *config]
    quiet = {"cwd": work, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    process = subprocess.Popen([*snakemake, "--", target], start_new_session=True, **quiet)
    while process.poll() is None and len(list(labels.glob("*.png"))) < 2:
        time.sleep(0.002)
    os.killpg(process.pid, signal.SIGKILL)  # Snakemake and its job, as a crash would
    process.wait()
    assert not target.exists(), "prepare finished before it could be killed"
    kept = {path.name: path.stat().st_mtime_ns for path in labels.glob("*.png")}
    assert 2 <= len(kept) < samples

    locked = subprocess.run([*snakemake, "--", target], cwd=work, capture_output=True, text=True)
    assert locked.returncode != 0 and "LockException" in locked.stdout + locked.stderr
    subprocess.run([*snakemake, "--unlock"], check=True, **quiet)
    subprocess.run([*snakemake, "--rerun-incomplete", "--", target], check=True, **quiet)

    log = (work / "logs" / "prepare_gta5.log").read_text()
    assert f"({samples - len(kept)} converted, {len(kept)} up to date" in log, log
    assert {name: (labels / name).stat().st_mtime_ns for name in kept} == kept  # not rewritten
    assert json.loads(target.read_text())["counts"] == {"train": samples}
