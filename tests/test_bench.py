"""The bench suite's own machinery: its reference implementations agree with hqtd's, the phase
clock counts nested phases once, the model recorder sees which outputs a loss used, the memory
probe sees an allocation, and scripts without their prerequisites report "not run"."""

import itertools
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from autograd_checks import assert_same_value_and_grads
from torch import nn

from bench.adapt_step import PhaseClock, RecordingModel, model_passes
from bench.contrastive import dense_pixel_loss
from bench.dag import _jobs
from bench.prototype import inputs, loop_prototype_loss
from hqtd.adapt.contrastive import pixel_contrastive_loss, prototype_contrastive_loss
from hqtd.config import load_config
from hqtd.models.deeplabv2 import SegOutput

ROOT = Path(__file__).resolve().parent.parent


def test_dense_reference_matches_the_blockwise_loss():
    gen = torch.Generator().manual_seed(0)
    strong = torch.randn(2, 5, 6, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    weak = torch.randn(2, 5, 6, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    expected = dense_pixel_loss(strong, weak, 0.05)
    got = pixel_contrastive_loss(strong, weak, 0.05, block_rows=16)
    assert_same_value_and_grads(got, expected, (strong, weak))


def test_loop_reference_matches_the_vectorised_prototype_loss():
    strong, weak, labels = inputs((9, 11))
    expected = loop_prototype_loss(strong, weak, labels, 1 / 7)
    got = prototype_contrastive_loss(strong, weak, labels, 1 / 7)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=0)


def test_phase_clock_counts_nested_phases_once():
    ticks = itertools.count()  # the fake timer advances by 1 at each reading
    clock = PhaseClock(timer=lambda: float(next(ticks)))
    with clock("outer"):  # reads 0 ... 5
        with clock("inner"):  # reads 1 ... 2
            pass
        with clock("inner"):  # reads 3 ... 4
            pass
    # outer spans 5, of which its children took 1 + 1.
    assert dict(clock.seconds) == {"inner": 2.0, "outer": 3.0}


class _Segmenter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x, aux=True):
        small = self.conv(x)
        return SegOutput(small * 2, small * 3 if aux else None, small)


def test_recorder_sees_the_outputs_a_loss_used_and_replays_the_calls():
    model = RecordingModel(_Segmenter())
    model.recording = True
    first, second = torch.rand(1, 3, 4, 4), torch.rand(2, 3, 4, 4)
    with torch.no_grad():
        model(torch.rand(1, 3, 4, 4))
    (model(first).aux.sum() + model(second, aux=False).main_small.sum()).backward()
    calls = model.calls
    assert [call.grad for call in calls] == [False, True, True]
    assert [call.aux for call in calls] == [True, True, False]
    assert [call.used for call in calls] == [set(), {"aux", "main_small"}, {"main_small"}]
    assert calls[1].image is first
    # The replay runs the same calls (grad or not) and a backward through the used outputs.
    model.model.zero_grad()
    cfg = load_config(["run_dir=unused"])
    model_passes(model.model, calls, torch.device("cpu"), cfg)()
    assert all(param.grad is not None for param in model.parameters())
    assert len(model.calls) == 3  # replaying does not record


def test_peak_memory_sees_an_allocation():
    # In a fresh process, as the bench uses it: in a long-lived one, memory freed earlier and
    # still resident can serve the allocation without growing the resident set.
    size = 64 * 2**20
    code = (
        "import torch; from bench.common import peak_memory; "
        f"print(peak_memory(lambda: torch.ones({size // 4})))"  # 64 MiB of float32, written
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert 0.9 * size < int(done.stdout) < 2 * size


def test_dag_job_count_from_a_dry_run_table():
    table = "Job stats:\njob     count\n-----  -------\ntrain        8\ntotal       31\n"
    assert _jobs(table) == 31
    assert _jobs("Nothing to be done") == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="the skip path exists only without a GPU")
def test_gpu_script_skips_cleanly_without_cuda(tmp_path):
    summary = tmp_path / "rows.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu_step", "--summary", str(summary)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0
    assert "skipped, no CUDA device" in done.stdout
    assert "not run (no CUDA)" in summary.read_text()


@pytest.mark.slow
def test_real_size_pipeline_runs_through_at_tiny_size(tmp_path):
    # Every step of bench.real_size (raw files in the three real formats, prepare, init, train,
    # both evaluations, tables), on the mini network at 1/20 of the real sizes.
    markdown = tmp_path / "steps.md"
    command = [sys.executable, "-m", "bench.real_size", "--tiny", "--iterations", "2",
               "--work", str(tmp_path / "work"), "--markdown", str(markdown)]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    table = markdown.read_text()
    for step in ("prepare gta5", "prepare synthia", "prepare cityscapes", "train official",
                 "evaluate paper", "evaluate strict", "tables"):  # fmt: skip
        assert step in table
    runs = tmp_path / "work" / "runs" / "gta5" / "official" / "seed0"
    assert (runs / "eval" / "strict" / "metrics.json").is_file()
    assert list((tmp_path / "work" / "tables").iterdir())


@pytest.mark.slow
def test_gpu_check_dry_run_exercises_every_part(tmp_path):
    report = tmp_path / "gpu_check.md"
    command = [sys.executable, "-m", "bench.gpu_check", "--dry-run", "--out", str(report)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    text = report.read_text()
    assert "failed" not in text, text
    for title in ("GPU tests", "Real-size run", "Adaptation step", "Loss curves",
                  "Largest batch", "Projected GPU-hours"):  # fmt: skip
        assert title in text
    assert "skipped (time cap)" not in text  # the dry run's caps leave room for every case
