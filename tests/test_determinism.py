"""train.determinism: the portable mode's pinning, its refusals, and where the command sets it.

The test process itself is pinned by conftest.py (before torch loads), as the mode requires.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hqtd.cli import main
from hqtd.config import Determinism, load_config, to_yaml
from hqtd.determinism import (
    cpu_kernels,
    kernel_env,
    kernel_settings,
    pin_cpu_kernels,
    strictest_mode,
)
from hqtd.errors import HqtdError

PORTABLE = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "COMPATIBLE"}


def test_modes_map_to_their_environment():
    assert kernel_env(Determinism.default) == {}
    assert kernel_env(Determinism.portable) == PORTABLE


def test_a_process_that_loaded_torch_unpinned_is_refused(monkeypatch: pytest.MonkeyPatch):
    pin_cpu_kernels(Determinism.portable)  # this process was pinned before torch loaded
    monkeypatch.delenv("MKL_CBWR")
    with pytest.raises(HqtdError, match="MKL_CBWR=COMPATIBLE"):
        pin_cpu_kernels(Determinism.portable)
    with pytest.raises(HqtdError, match="torch was loaded before"):
        with cpu_kernels(Determinism.portable, threads=1):
            pass
    pin_cpu_kernels(Determinism.default)  # nothing to pin


def test_command_refuses_in_one_line(monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx512")
    assert main(["train", "run_dir=unused", "train.determinism=portable"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ATEN_CPU_CAPABILITY=avx2" in err


def test_portable_block_turns_onednn_off_and_needs_fixed_threads():
    assert torch.backends.mkldnn.enabled
    with cpu_kernels(Determinism.portable, threads=1):
        settings = kernel_settings(Determinism.portable)
    assert torch.backends.mkldnn.enabled  # restored
    assert settings["mkldnn"] is False and settings["determinism"] == "portable"
    assert settings["env"] == PORTABLE and settings["cpu_capability"] == "AVX2"
    with pytest.raises(HqtdError, match="train.threads"):
        with cpu_kernels(Determinism.portable, threads=0):
            pass


def test_command_pins_before_torch_loads(tmp_path: Path):
    """A fresh ``hqtd train`` whose environment asks torch for other kernels: the command's
    portable pinning wins (the run itself stops early, at its missing init checkpoint)."""
    script = (
        "import json, os, sys\n"
        "from hqtd.cli import main\n"
        "status = main(['train', 'run_dir=unused', 'method=full', 'train.threads=1',\n"
        "               'train.determinism=portable'])\n"
        "import torch\n"
        "from hqtd.config import Determinism\n"
        "from hqtd.determinism import kernel_settings\n"
        "print(json.dumps([status, kernel_settings(Determinism.portable)]))\n"
    )
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "AUTO"}
    env.pop("ONEDNN_MAX_CPU_ISA")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    status, settings = json.loads(done.stdout.strip().splitlines()[-1])
    assert status == 2 and "train.init_checkpoint" in done.stderr  # failed after the pinning
    assert settings["env"] == PORTABLE and settings["cpu_capability"] == "AVX2"


def test_figures_pin_when_any_run_is_portable(tmp_path: Path):
    for name, mode in (("a", "default"), ("b", "portable")):
        config = load_config(["run_dir=r", f"train.determinism={mode}"])
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(to_yaml(config))
    assert strictest_mode(tmp_path) is Determinism.portable
    (tmp_path / "b" / "config.yaml").unlink()
    assert strictest_mode(tmp_path) is Determinism.default
