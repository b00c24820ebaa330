"""`hqtd evaluate checkpoint=FILE benchmark=B`: any checkpoint, no run directory, no run's results
overwritten (issue 17)."""

import json
from pathlib import Path

import numpy as np
from test_checkpoints import _hqtd_checkpoint, _mini
from test_fidelity_model import _authors_save, _road_everywhere, _score, run_dir  # noqa: F401
from test_train import TINY, data_root  # noqa: F401  (fixture)

from hqtd.cli import main
from hqtd.evaluate import evaluate_command


def test_authors_file_without_a_run_dir_equals_the_run_dir_scoring(
    run_dir: Path,  # noqa: F811  (fixture)
    data_root: Path,  # noqa: F811  (fixture)
    tmp_path: Path,
    capsys,
    monkeypatch,
):
    shadow, student = _mini(seed=0), _road_everywhere(_mini(seed=0))
    authors = tmp_path / "authors.pth"
    _authors_save(authors, student, shadow)
    expected, _, _ = _score(run_dir, capsys, f"checkpoint={authors}")
    monkeypatch.chdir(tmp_path)
    args = [f"checkpoint={authors}", "benchmark=mini_gta5", f"data_root={data_root}", *TINY]
    evaluate_command([*args, "method=source_only", "train.num_workers=0"])
    out = Path("results/evaluations/mini_gta5/authors/paper")
    np.testing.assert_array_equal(np.load(out / "confusion.npy"), expected)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["weights"]["entry"] == "shadow"  # the authors' EMA, as their evaluation
    assert "their network conventions" in capsys.readouterr().out


def test_checkpoint_with_a_run_dir_keeps_the_runs_own_results(
    run_dir: Path,  # noqa: F811  (fixture)
    tmp_path: Path,
    capsys,
):
    own = run_dir / "eval" / "paper" / "metrics.json"
    own.parent.mkdir(parents=True)
    own.write_text("{}")
    twin = tmp_path / "other.pt"
    _hqtd_checkpoint(twin, _mini(seed=0), _mini(seed=0))
    evaluate_command([f"run_dir={run_dir}", f"checkpoint={twin}"])
    assert own.read_text() == "{}"
    assert (run_dir / "eval" / "paper" / "checkpoint-other" / "metrics.json").is_file()


def test_without_run_dir_or_benchmark_is_one_line(capsys):
    assert main(["evaluate", "checkpoint=x.pth"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(
        "expected run_dir=DIR (a training run directory) or checkpoint=FILE benchmark=NAME"
    )


def test_same_scores_made_elsewhere_keep_the_recorded_file(
    run_dir: Path,  # noqa: F811  (fixture)
    tmp_path: Path,
    capsys,
):
    """Issue 12: a rerun that reproduces a committed metrics.json on another machine (another CPU
    in its provenance) keeps the file byte for byte; different scores replace it."""
    checkpoint = tmp_path / "weights.pt"
    _hqtd_checkpoint(checkpoint, _mini(seed=0), _mini(seed=0))
    args = [f"checkpoint={checkpoint}", f"out={tmp_path / 'eval'}", *TINY]
    metrics_path = tmp_path / "eval" / "metrics.json"
    evaluate_command([f"run_dir={run_dir}", *args])
    recorded = json.loads(metrics_path.read_text())
    recorded["provenance"]["device"] = "Intel(R) Xeon(R) Platinum 8480+"
    recorded["git_revision"] = "0" * 40
    elsewhere = json.dumps(recorded, indent=2, sort_keys=True) + "\n"
    metrics_path.write_text(elsewhere)
    evaluate_command([f"run_dir={run_dir}", *args])
    assert metrics_path.read_text() == elsewhere
    assert "the recorded scores; kept" in capsys.readouterr().out

    recorded["mIoU"] += 1.0  # a score that this evaluation does not reproduce
    metrics_path.write_text(json.dumps(recorded))
    evaluate_command([f"run_dir={run_dir}", *args])
    rewritten = json.loads(metrics_path.read_text())
    assert rewritten["mIoU"] == recorded["mIoU"] - 1.0
    assert rewritten["provenance"]["device"] != recorded["provenance"]["device"]
