"""The authors' network conventions (METHOD.md §8.1, §8.2): the logits' upsampling convention and
which weights of a checkpoint are scored or start adaptation.

The bilinear references are written here in NumPy from the two sampling rules; the authors' save
format is rebuilt from the facts of METHOD.md §8.2 with the key layout of ``test_checkpoints``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_checkpoints import _authors_state, _equal_states, _hqtd_checkpoint, _mini
from test_train import adapt_args, cli_error, data_root, run_args  # noqa: F401  (data_root: fixture)
from torch import Tensor, nn

from hqtd.config import PARAMS_DIR, Backbone, InputStyle, ModelConfig, Weights, load_config, to_yaml
from hqtd.errors import HqtdError
from hqtd.evaluate import evaluate_command
from hqtd.models import build_model, load_weights
from hqtd.training.stage import initial_model

# ----------------------------------------------------------------------------------------------
# §8.1 upsampling convention


def bilinear_reference(x: np.ndarray, size: tuple[int, int], align_corners: bool) -> np.ndarray:
    """(C, h, w) -> (C, H, W) bilinear, separable, in float64.

    Output index i samples the input at ``i·(n−1)/(N−1)`` (corner-aligned) or at the half-pixel
    position ``(i + 0.5)·n/N − 0.5`` clamped to the input (edge pixels repeat).
    """

    def weights(n: int, big_n: int) -> np.ndarray:
        i = np.arange(big_n, dtype=np.float64)
        if align_corners:
            src = i * (n - 1) / (big_n - 1)
        else:
            src = np.clip((i + 0.5) * n / big_n - 0.5, 0, n - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n - 1)
        frac = src - lo
        matrix = np.zeros((big_n, n))
        matrix[np.arange(big_n), lo] += 1 - frac
        matrix[np.arange(big_n), hi] += frac
        return matrix

    rows, cols = weights(x.shape[1], size[0]), weights(x.shape[2], size[1])
    return np.einsum("Hh,chw,Ww->cHW", rows, x.astype(np.float64), cols)


def _model(align_corners: bool) -> nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(
        backbone=Backbone.mini,
        mini_width=8,
        caffe_stride=False,
        input_style=InputStyle.torchvision,
        align_corners=align_corners,
    )
    return build_model(cfg).eval()


def _heads_and_outputs(model: nn.Module, x: Tensor) -> tuple[dict[str, Tensor], object]:
    """The stride-8 outputs of both heads (caught by hooks) and the model's output."""
    small = {}
    hooks = [
        getattr(model, name).register_forward_hook(
            lambda _m, _i, out, name=name: small.__setitem__(name, out)
        )
        for name in ("head_main", "head_aux")
    ]
    with torch.no_grad():
        out = model(x)
    for hook in hooks:
        hook.remove()
    return small, out


@pytest.mark.parametrize("align_corners", [True, False])
def test_both_heads_upsample_with_the_configured_convention(align_corners):
    # 61x45 input -> 8x6 stride-8 grid (conv1, max-pool, layer2: n -> floor((n-1)/2)+1 each)
    x = torch.rand(1, 3, 45, 61, generator=torch.Generator().manual_seed(1))
    small, out = _heads_and_outputs(_model(align_corners), x)
    assert small["head_main"].shape[-2:] == small["head_aux"].shape[-2:] == (6, 8)
    for name, upsampled in (("head_main", out.main), ("head_aux", out.aux)):
        expected = bilinear_reference(small[name][0].numpy(), (45, 61), align_corners)
        np.testing.assert_allclose(upsampled[0].numpy(), expected, rtol=0, atol=1e-5)
        other = bilinear_reference(small[name][0].numpy(), (45, 61), not align_corners)
        assert np.abs(upsampled[0].numpy() - other).max() > 1e-3  # the two rules differ here


def test_corner_aligned_upsampling_by_hand():
    """A 2x2 map to 3x3 with align_corners=True: corners copied, the centre their mean."""
    model = _model(align_corners=True)
    small = torch.tensor([[[[0.0, 2.0], [4.0, 10.0]]]])
    expected = torch.tensor([[[[0.0, 1.0, 2.0], [2.0, 4.0, 6.0], [4.0, 7.0, 10.0]]]])
    assert torch.equal(model.upsample(small, (3, 3)), expected)


def test_model_files_keep_the_half_pixel_default():
    for name in ("deeplabv2", "mini"):
        text = (PARAMS_DIR / "model" / f"{name}.yaml").read_text()
        assert "\nalign_corners: false\n" in text, name
    assert load_config(["run_dir=r"]).model.align_corners is False


# ----------------------------------------------------------------------------------------------
# §8.2 which weights: loading


def _authors_save(path: Path, student: nn.Module | None, shadow: nn.Module | None) -> None:
    """The authors' ``save_checkpoint`` layout (``main.py``), DataParallel-prefixed weights."""
    optimizer = torch.optim.SGD((student or shadow).parameters(), lr=2.5e-4, momentum=0.9)
    checkpoint = {"epoch": 3, "iter": 4461, "optimizer": optimizer.state_dict(), "best_MIou": 0.5}
    for entry, model in (("state_dict", student), ("shadow", shadow)):
        if model is not None:
            checkpoint[entry] = {"module." + k: v for k, v in _authors_state(model).items()}
    torch.save(checkpoint, path)


@pytest.mark.parametrize(
    ("weights", "for_training", "entry"),
    [
        (Weights.auto, False, "shadow"),  # scoring: the EMA (main.py's evaluation)
        (Weights.auto, True, "state_dict"),  # adaptation starts from the student, as theirs
        (Weights.ema, True, "shadow"),
        (Weights.student, False, "state_dict"),
    ],
)
def test_authors_save_format_entries(tmp_path, weights, for_training, entry):
    student, shadow = _mini(seed=0), _mini(seed=1)
    path = tmp_path / "best.pth"
    _authors_save(path, student, shadow)
    model = _mini(seed=2)
    assert load_weights(model, path, weights=weights, for_training=for_training) == entry
    assert _equal_states(model, {"state_dict": student, "shadow": shadow}[entry])


@pytest.mark.parametrize("for_training", [False, True])
def test_hqtd_file_auto_is_the_ema_for_scoring_and_training(tmp_path, for_training):
    student, ema = _mini(seed=0), _mini(seed=1)
    path = tmp_path / "last.pt"
    _hqtd_checkpoint(path, student, ema)
    model = _mini(seed=2)
    assert load_weights(model, path, for_training=for_training) == "ema"
    assert _equal_states(model, ema)


def test_missing_entry_is_one_line_naming_what_the_file_holds(tmp_path):
    student = _mini(seed=0)
    path = tmp_path / "student_only.pth"
    _authors_save(path, student, None)
    with pytest.raises(HqtdError) as error:
        load_weights(_mini(seed=1), path, weights=Weights.ema)
    message = str(error.value)
    assert message == f"{path}: no ema weights ('shadow') in this file; it holds: state_dict"
    # auto falls back to the only weights the file has, as the authors' loader does
    model = _mini(seed=1)
    assert load_weights(model, path) == "state_dict"
    assert _equal_states(model, student)


def test_bare_state_dict_serves_auto_only(tmp_path):
    reference = _mini(seed=0)
    path = tmp_path / "bare.pth"
    torch.save(_authors_state(reference), path)
    for weights in (Weights.ema, Weights.student):
        with pytest.raises(HqtdError, match=f"^{path}: a bare state dict.*'{weights.value}'$"):
            load_weights(_mini(seed=1), path, weights=weights)
    model = _mini(seed=1)
    assert load_weights(model, path, weights=Weights.auto) is None
    assert _equal_states(model, reference)


# ----------------------------------------------------------------------------------------------
# §8.2 which weights: `hqtd evaluate` and adaptation


@pytest.fixture
def run_dir(data_root: Path, tmp_path: Path) -> Path:  # noqa: F811  (data_root: fixture)
    """A run directory holding only the configuration that ``hqtd evaluate`` reads."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = load_config(run_args(data_root, run_dir, "method=source_only", "train.num_workers=0"))
    (run_dir / "config.yaml").write_text(to_yaml(config))
    return run_dir


def _road_everywhere(model: nn.Module) -> nn.Module:
    """The same network with the main head's road logit raised by 100: it predicts road only."""
    with torch.no_grad():
        model.head_main.branches[0].bias[0] += 100.0
    return model


def _score(run_dir: Path, capsys, *overrides: str) -> tuple[np.ndarray, dict, str]:
    """Confusion matrix, metrics.json and printed lines of one ``hqtd evaluate``."""
    capsys.readouterr()
    out = run_dir / "scored"  # checkpoint=FILE never writes over the run's own eval/
    evaluate_command([f"run_dir={run_dir}", *overrides, f"out={out}"])
    metrics = json.loads((out / "metrics.json").read_text())
    return np.load(out / "confusion.npy"), metrics, capsys.readouterr().out


def test_hqtd_evaluate_scores_the_shadow_of_an_authors_file_with_their_network(
    run_dir: Path, tmp_path: Path, capsys
):
    shadow, student = _mini(seed=0), _road_everywhere(_mini(seed=0))
    authors, twin = tmp_path / "authors.pth", tmp_path / "twin.pt"
    _authors_save(authors, student, shadow)
    _hqtd_checkpoint(twin, student, shadow)  # the same weights in hqtd's format

    conf, metrics, printed = _score(run_dir, capsys, f"checkpoint={authors}")
    assert metrics["weights"] == {"requested": "auto", "entry": "shadow"}
    assert printed.splitlines()[0] == (
        f"{authors}: authors' checkpoint, scored with their network conventions "
        "model.align_corners=true, model.aspp_branches=2"
    )
    assert conf[:, 1:].sum() > 0  # not the student, which predicts road only
    authors_network = ("model.align_corners=true", "model.aspp_branches=2")
    twin_conf, twin_metrics, printed = _score(
        run_dir, capsys, f"checkpoint={twin}", *authors_network
    )
    assert np.array_equal(conf, twin_conf)
    assert twin_metrics["weights"] == {"requested": "auto", "entry": "ema"}
    assert "authors'" not in printed  # hqtd's own files keep the run's network
    # ... which differs here, so the equality above needed the authors' network
    hqtd_conf, _, _ = _score(run_dir, capsys, f"checkpoint={twin}")
    assert not np.array_equal(conf, hqtd_conf)

    conf, metrics, _ = _score(run_dir, capsys, f"checkpoint={authors}", "weights=student")
    assert metrics["weights"] == {"requested": "student", "entry": "state_dict"}
    assert conf[:, 0].sum() == conf.sum() > 0  # road everywhere: the student was scored


def test_a_key_set_on_the_command_line_beats_the_authors_convention(
    run_dir: Path, tmp_path: Path, capsys
):
    shadow = _mini(seed=0)
    authors, twin = tmp_path / "authors.pth", tmp_path / "twin.pt"
    _authors_save(authors, _mini(seed=1), shadow)
    _hqtd_checkpoint(twin, shadow, shadow)
    conf, _, printed = _score(run_dir, capsys, f"checkpoint={authors}", "model.aspp_branches=4")
    assert printed.splitlines()[0].endswith("conventions model.align_corners=true")
    expected, _, _ = _score(run_dir, capsys, f"checkpoint={twin}", "model.align_corners=true")
    assert np.array_equal(conf, expected)
    both = ("model.aspp_branches=4", "model.align_corners=false")
    conf, _, printed = _score(run_dir, capsys, f"checkpoint={authors}", *both)
    assert "authors'" not in printed
    expected, _, _ = _score(run_dir, capsys, f"checkpoint={twin}")
    assert np.array_equal(conf, expected)


def test_hqtd_evaluate_missing_entry_is_one_line(run_dir: Path, tmp_path: Path, capsys):
    path = tmp_path / "student_only.pth"
    _authors_save(path, _mini(seed=0), None)
    argv = ["evaluate", f"run_dir={run_dir}", f"checkpoint={path}", "weights=ema"]
    err = cli_error(capsys, argv)
    assert str(path) in err and "it holds: state_dict" in err


def test_adaptation_starts_from_the_state_dict_of_an_authors_file(
    data_root: Path,  # noqa: F811  (fixture)
    tmp_path: Path,
):
    student, shadow = _mini(seed=0), _mini(seed=1)
    authors, twin = tmp_path / "authors.pth", tmp_path / "twin.pt"
    _authors_save(authors, student, shadow)
    _hqtd_checkpoint(twin, student, shadow)
    cases = [
        (authors, "auto", student),
        (authors, "ema", shadow),
        (twin, "auto", shadow),  # hqtd's own files: the EMA, as before
        (twin, "student", student),
    ]
    for path, weights, expected in cases:
        args = adapt_args(data_root, tmp_path / "run", path, f"train.init_weights={weights}")
        model, _ = initial_model(load_config(args))
        assert _equal_states(model, expected), (path.name, weights)
