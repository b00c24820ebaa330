"""hqtd compare: per-class deltas between git revisions of results/tables/<grid>/runs.csv."""

import statistics
import subprocess
from pathlib import Path

import pytest

from hqtd.cli import main
from hqtd.errors import HqtdError
from hqtd.provenance import KEYS
from hqtd.report.compare import compare

HEADER = "benchmark,method,seed,protocol,checkpoint,iteration,metric,iou\n"


def runs_csv(values: dict[tuple[str, int, str], float]) -> str:
    """A runs.csv for benchmark gta5, paper protocol: values[(method, seed, metric)] = IoU."""
    lines = [
        f"gta5,{m},{s},paper,best,600,{metric},{v:.4f}\n" for (m, s, metric), v in values.items()
    ]
    return HEADER + "".join(lines)


def with_provenance(csv_text: str, **values: str) -> str:
    """``csv_text`` with the provenance columns of ``hqtd tables`` (``values`` override)."""
    columns = {key: "x" for key in KEYS} | values
    lines = csv_text.splitlines()
    header = lines[0] + "," + ",".join(columns)
    return (
        "\n".join([header] + [line + "," + ",".join(columns.values()) for line in lines[1:]]) + "\n"
    )


def git(repo: Path, *args: str) -> str:
    command = ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args]
    return subprocess.run(command, cwd=repo, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Path:
    """A git repository with two commits of the demo grid's results/tables/demo/runs.csv and a
    modified working tree."""
    git(tmp_path, "init", "-q")
    tables = tmp_path / "results" / "tables" / "demo"
    tables.mkdir(parents=True)
    first = {("full", 0, "road"): 80.0, ("full", 1, "road"): 82.0, ("full", 0, "mIoU19"): 40.0,
             ("full", 1, "mIoU19"): 41.0, ("source_only", 0, "road"): 70.0}  # fmt: skip
    (tables / "runs.csv").write_text(runs_csv(first))
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "first")
    second = {**first, ("full", 0, "road"): 85.0, ("full", 1, "road"): 88.0}
    (tables / "runs.csv").write_text(runs_csv(second))
    git(tmp_path, "commit", "-qam", "second")
    third = {**second, ("full", 1, "mIoU19"): 45.0}
    (tables / "runs.csv").write_text(runs_csv(third))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def line_of(report: str, method: str, metric: str) -> list[str]:
    line = next(
        x for x in report.splitlines() if x.startswith(f"| {method} ") and f" {metric} " in x
    )
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_deltas_between_two_commits_with_seed_spread(repo):
    report = compare("HEAD~1", "HEAD", "demo")
    assert "### gta5, paper protocol" in report
    road = line_of(report, "full", "road")
    mean_a, mean_b = statistics.mean([80, 82]), statistics.mean([85, 88])
    assert road[2:5] == [f"{mean_a:.2f}", f"{mean_b:.2f}", f"{mean_b - mean_a:+.2f}"]
    assert road[5:] == [
        f"{statistics.stdev([80, 82]):.2f}",
        f"{statistics.stdev([85, 88]):.2f}",
        "2 / 2",
        "",
    ]  # fmt: skip  (no per_image.npz: no interval)
    assert line_of(report, "full", "mIoU19")[4] == "+0.00"
    single = line_of(report, "source_only", "road")
    assert single[5:] == ["", "", "1 / 1", ""]  # one seed: no std
    # Rows keep the order of runs.csv (grid order), not alphabetical order.
    rows = [x.split("|")[1:3] for x in report.splitlines() if x.startswith("| ") and "---" not in x]
    assert [(m.strip(), k.strip()) for m, k in rows[1:]] == [
        ("full", "road"), ("full", "mIoU19"), ("source_only", "road")
    ]  # fmt: skip


def test_default_b_is_the_working_tree(repo):
    report = compare("HEAD")
    assert "B = working tree" in report
    assert line_of(report, "full", "mIoU19")[4] == f"{statistics.mean([40, 45]) - 40.5:+.2f}"


def test_cli_prints_the_report_of_the_default_grid(repo, capsys):
    assert main(["compare", "HEAD~1", "HEAD"]) == 0
    default = capsys.readouterr().out
    assert "| full " in default
    assert main(["compare", "HEAD~1", "HEAD", "--grid", "demo"]) == 0
    assert capsys.readouterr().out == default


def test_unknown_revision_and_missing_file_are_errors(repo, capsys):
    with pytest.raises(HqtdError, match="nosuchrev: not a git revision"):
        compare("nosuchrev")
    with pytest.raises(HqtdError, match="tables/mini/runs.csv: does not exist at revision HEAD"):
        compare("HEAD", "HEAD~1", "mini")
    assert main(["compare", "nosuchrev"]) == 2
    assert capsys.readouterr().err.strip() == "hqtd compare: error: nosuchrev: not a git revision"
    assert main(["compare", "HEAD", "--grid", "nope"]) == 2
    assert "unknown grid 'nope'; available: demo, mini, paper" in capsys.readouterr().err


def test_warns_once_per_differing_provenance_key(repo):
    tables = repo / "results" / "tables" / "demo"
    values = {("full", 0, "road"): 80.0, ("full", 1, "road"): 82.0}
    (tables / "runs.csv").write_text(with_provenance(runs_csv(values), git_revision="a"))
    git(repo, "commit", "-qam", "with provenance")
    same = compare("HEAD", None, "demo")
    assert "Warning" not in same
    changed = with_provenance(
        runs_csv(values), git_revision="b", torch_version="2.14.0", threads="4"
    )
    (tables / "runs.csv").write_text(changed)
    warnings = [line for line in compare("HEAD", None, "demo").splitlines() if "Warning" in line]
    assert warnings == [
        "Warning: torch_version differs: A x; B 2.14.0.",
        "Warning: threads differs: A x; B 4.",
    ]  # the git revision differs by design: not warned
    older = [line for line in compare("HEAD~1", "HEAD", "demo").splitlines() if "Warning" in line]
    assert older == ["Warning: A records no provenance (older runs.csv)."]


@pytest.mark.parametrize("cut", ["mid-row", "mid-field"])
def test_truncated_runs_csv_is_refused_in_one_line(repo, capsys, cut):
    path = repo / "results" / "tables" / "demo" / "runs.csv"
    text = path.read_text()
    # mid-row: half of the last row (fields missing); mid-field: only the last digit lost
    path.write_text(text[: -len(text.splitlines()[-1]) // 2] if cut == "mid-row" else text[:-2])
    before = path.read_bytes()
    assert main(["compare", "HEAD"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "runs.csv" in err and "truncated" in err
    assert path.read_bytes() == before
