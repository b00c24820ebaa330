"""The import guard lets PyPI's torchvision import next to CPU torch (DESIGN.md)."""

import subprocess
import sys


def _run_python(code: str) -> str:
    """stdout of ``code`` run in a fresh interpreter, which must exit 0."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_torchvision_v2_and_torchmetrics_import_after_hqtd():
    code = (
        "import hqtd, torch\n"
        "from torchvision import models, tv_tensors\n"
        "from torchvision.transforms import v2\n"
        "import torchmetrics\n"
        "mask = tv_tensors.Mask(torch.zeros(1, 8, 8, dtype=torch.uint8))\n"
        "img = torch.rand(1, 3, 8, 8)\n"
        "out_img, out_mask = v2.RandomHorizontalFlip(p=1.0)(img, mask)\n"
        "assert isinstance(out_mask, tv_tensors.Mask)\n"
        "models.resnet18(weights=None)\n"
        "print('ok')\n"
    )
    assert _run_python(code) == "ok"


def test_guard_is_a_noop_when_compiled_ops_load(monkeypatch):
    from hqtd import _torchvision_guard as guard

    monkeypatch.setattr(guard, "_compiled_ops_load", lambda: True)
    assert guard._define_missing_schemas() is None


def test_import_hqtd_defers_torch_until_torchvision_is_imported():
    code = (
        "import sys, hqtd, hqtd.grid\n"
        "assert 'torch' not in sys.modules, 'import hqtd pulled in torch'\n"
        "import torchvision\n"
        "assert 'hqtd._torchvision_guard' in sys.modules\n"
        "print('ok')\n"
    )
    assert _run_python(code) == "ok"
