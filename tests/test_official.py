"""`official` and `official_edge` against a float64 reference written from METHOD.md §4, §5, §8.

One adaptation iteration of a tiny float64 network: hqtd's ``adaptation_step`` and an independent
computation with plain torch ops must give the same loss terms, total and parameter gradients.
Only the random draws are pinned, taken from hqtd's own sampling with the same generator state:
the weak and strong views of both batches (whatever augmentation mode makes them), the crop
geometry (replayed on a map of pixel indices) and the ClassMix permutation. Everything else — the
pseudo-labels, masks, the ClassMix candidate set with the authors' off-by-one, the pastes, every
CE, both InfoNCE losses with their first-image restrictions, the edge bands (OpenCV), the weights
and the total — is computed below.

Then the training-loop switches of METHOD.md §8.5: the authors' epoch paces validation and the
EMA's BatchNorm buffer copies, and the EMA may start from the network before the source
checkpoint is loaded.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_adapt_step import step_settings
from test_train import TINY as TRAIN_TINY
from torch import Tensor, nn

import hqtd.adapt.step as step
import hqtd.train
import hqtd.training.run_log
from hqtd.adapt.ema import ModelEMA
from hqtd.config import load_config
from hqtd.data.prepare import prepare
from hqtd.data.synth.write import Counts, generate
from hqtd.errors import HqtdError
from hqtd.models.checkpoints import load_checkpoint, load_weights
from hqtd.models.deeplabv2 import SegOutput, build_model
from hqtd.train import train
from hqtd.training.schedule import epoch_length
from hqtd.training.stage import initial_model

IGNORE = 255
NUM_CLASSES = 8
CROP = 32
STEP_SEED = 8  # a draw whose image 0 has 3 prototypes, and y^c differs between y^w and §8.4a
TOL = {"rtol": 1e-10, "atol": 1e-12}


# ----------------------------------------------------------------------------------------------
# Fixture: a tiny float64 segmenter and two batches


class TinySeg(nn.Module):
    """Conv + BN features pooled to stride 8, 1x1 heads; main logits scaled to be confident."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.main = nn.Conv2d(8, NUM_CLASSES, 1)
        self.aux = nn.Conv2d(8, NUM_CLASSES, 1)

    def forward(self, x: Tensor, aux: bool = True) -> SegOutput:
        features = F.avg_pool2d(self.features(x.double()), 8, ceil_mode=True)
        small = 30.0 * self.main(features)

        def up(logits: Tensor) -> Tensor:
            return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

        return SegOutput(up(small), up(self.aux(features)) if aux else None, small)


def batches(paste_in_second: bool = True) -> tuple[dict, dict]:
    """Source: vertical stripes of classes ≤ 4 and > 4 plus ignored columns; target: 8x8 blocks of
    random colours (confidence varies block by block). ``paste_in_second=False`` leaves image 1
    without ClassMix candidates (only classes ≤ 4): its M^s, and so its band, is empty."""
    gen = torch.Generator().manual_seed(123)
    stripes = torch.tensor([0, 5, 2, 6, 1, 7, 3, 5, 4, 6])[(torch.arange(64) // 4) % 10]
    label = stripes.expand(2, 48, 64).clone()
    label[:, :, :4] = IGNORE
    label[1] = label[1].roll(9, dims=1)
    if not paste_in_second:
        label[1] = torch.where(label[1] > 4, label[1] - 4, label[1]).masked_fill(
            label[1] == IGNORE, IGNORE
        )
    source = {"image": torch.rand(2, 3, 48, 64, generator=gen, dtype=torch.float64), "label": label}
    blocks = torch.rand(2, 3, 5, 10, generator=gen, dtype=torch.float64)
    target = {"image": F.interpolate(blocks, size=(40, 80), mode="nearest")}
    return source, target


def method_config(variant: str):
    cfg = load_config([f"method={variant}", "run_dir=unused"])
    cfg.benchmark.crop_size = CROP
    # Distinct weights (not the mini benchmark's λ_st = λ_mix = 1), so that every product of
    # them in the total is told apart.
    cfg.method = replace(cfg.method, lambda_st=0.3, lambda_aux=0.2, lambda_mix=0.7, lambda_cl=0.05)
    return cfg


# ----------------------------------------------------------------------------------------------
# Pinned draws: recorded from hqtd's own sampling functions during the step


@dataclass
class Draws:
    views: list = field(default_factory=list)  # make_views results: source, then target
    crop_index: list = field(default_factory=list)  # (B, S, S) flat source-pixel index per view
    classmix_state: Tensor | None = None  # generator state before the ClassMix permutations


def _swap_generator(args: tuple, kwargs: dict, new: torch.Generator) -> tuple[tuple, dict]:
    args = tuple(new if isinstance(a, torch.Generator) else a for a in args)
    kwargs = {k: new if isinstance(v, torch.Generator) else v for k, v in kwargs.items()}
    return args, kwargs


def _generator(args: tuple, kwargs: dict) -> torch.Generator:
    return next(a for a in (*args, *kwargs.values()) if isinstance(a, torch.Generator))


def run_hqtd(student: nn.Module, cfg, source: dict, target: dict, monkeypatch) -> tuple:
    """hqtd's step with spies on its sampling: (result, gradients, draws)."""
    draws = Draws()
    make_views, classmix_masks = step.make_views, step.classmix_masks

    def spy_views(image, label, *args, **kwargs):
        state = _generator(args, kwargs).get_state()
        views = make_views(image, label, *args, **kwargs)
        # Replay the same draws on a map of flat pixel indices: the crop geometry.
        batch, _, height, width = image.shape
        index = torch.arange(height * width, dtype=torch.float64).view(1, 1, height, width)
        replay = torch.Generator().set_state(state)
        args, kwargs = _swap_generator(args, kwargs, replay)
        crop = make_views(image, index.expand(batch, 1, height, width), *args, **kwargs).label
        draws.views.append(views)
        draws.crop_index.append(crop[:, 0].round().long())
        return views

    def spy_classmix(labels, generator, *args, **kwargs):
        draws.classmix_state = generator.get_state()
        return classmix_masks(labels, generator, *args, **kwargs)

    monkeypatch.setattr(step, "make_views", spy_views)
    monkeypatch.setattr(step, "classmix_masks", spy_classmix)
    ema = ModelEMA(student)
    generator = torch.Generator().manual_seed(STEP_SEED)
    result = step.adaptation_step(student, ema, source, target, *step_settings(cfg), generator)
    result.loss.backward()
    return result, [p.grad.clone() for p in student.parameters()], draws


# ----------------------------------------------------------------------------------------------
# The reference, from METHOD.md


def ce(logits: Tensor, target: Tensor) -> Tensor:
    """Mean pixel CE over labelled pixels (the authors' nn.CrossEntropyLoss, ignore → 255 here)."""
    return F.cross_entropy(logits, target, ignore_index=IGNORE)


def info_nce(a: Tensor, b: Tensor, tau: float) -> Tensor:
    """InfoNCE over [a; b] with S = Z Zᵀ, the diagonal pushed to −1e5 as the authors do."""
    z = torch.cat([a, b])
    n = len(a)
    eye = torch.eye(2 * n, dtype=z.dtype)
    similarity = (z @ z.T) * (1 - eye) - 1e5 * eye
    positives = torch.cat([torch.arange(n) + n, torch.arange(n)])
    return F.cross_entropy(similarity / tau, positives)


def masked_ce(logits: Tensor, target: Tensor, where: Tensor) -> Tensor:
    """CE on the pixels of ``where`` only; 0 (with a zero gradient) when there are none."""
    if not where.any():
        return (logits * 0).sum()
    return ce(logits, target.masked_fill(~where, IGNORE))


def band(mask: Tensor) -> Tensor:
    """§5: dilate − erode with OpenCV's 2x2 kernel of ones, per image."""
    kernel = np.ones((2, 2), np.uint8)
    bands = []
    for m in mask.numpy().astype(np.uint8):
        dilated = cv2.dilate(m * 255, kernel) > 254
        eroded = cv2.erode(m * 255, kernel) > 254
        bands.append(torch.from_numpy(dilated & ~eroded))
    return torch.stack(bands)


def authors_candidates(label: Tensor) -> list[int]:
    """§4 step 4 with the off-by-one: the unique labels sorted with ignore as −1 (first), K = the
    number > 4, entries j + n − K − 1 for j < K (index −1 wraps to the last)."""
    values = sorted(-1 if v == IGNORE else v for v in label.unique().tolist())
    k = sum(v > 4 for v in values)
    n = len(values)
    return [IGNORE if values[j + n - k - 1] == -1 else values[j + n - k - 1] for j in range(k)]


def classmix_mask(labels: Tensor, state: Tensor) -> Tensor:
    """M^s: half (floor) of the candidates, 1 if one; the choice replays hqtd's permutation."""
    replay = torch.Generator().set_state(state)
    masks = []
    for label in labels:
        candidates = authors_candidates(label)
        order = torch.randperm(len(candidates), generator=replay).tolist()
        count = 1 if len(candidates) == 1 else len(candidates) // 2
        chosen = torch.tensor([candidates[i] for i in order[:count]], dtype=label.dtype)
        masks.append((label[..., None] == chosen).any(-1))
    return torch.stack(masks)


def paste(mask: Tensor, inside: Tensor, outside: Tensor) -> Tensor:
    """``mask·inside + (1 − mask)·outside`` for images (B, 3, H, W) or labels (B, H, W)."""
    m = mask[:, None] if inside.dim() == 4 else mask
    return m * inside + ~m * outside


def to_grid(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest resize to the stride-8 grid: row i takes row floor(i·H/h) (torch's 'nearest')."""
    rows = torch.arange(size[0]) * labels.shape[1] // size[0]
    cols = torch.arange(size[1]) * labels.shape[2] // size[1]
    return labels[:, rows][:, :, cols]


def reference(model: nn.Module, cfg, source: dict, target: dict, draws: Draws) -> tuple:
    """METHOD.md §4 steps 1-11 with every quirk of `official` (and §5 + §8.4 for the edge code).

    Returns:
        (terms, total, facts): unweighted terms, the weighted total, and booleans saying which
        branches this fixture exercised.
    """
    m, edge = cfg.method, cfg.method.edge
    out = model(source["image"])  # step 1
    terms = {"src": ce(out.main, source["label"]), "src_aux": ce(out.aux, source["label"])}

    src_views, tgt_views = draws.views  # step 2 (pinned)
    xs_w, xs_s, ys = src_views.weak.double(), src_views.strong.double(), src_views.label
    xt_w, xt_s = tgt_views.weak.double(), tgt_views.strong.double()
    with torch.no_grad():  # step 3: argmax on the full target image, then cropped like W
        full = model(target["image"]).main.argmax(1).flatten(1)
    y_hat = torch.stack([f[i] for f, i in zip(full, draws.crop_index[1], strict=True)])

    ms = classmix_mask(ys, draws.classmix_state)  # step 4
    xm_w, xm_s, ym = paste(ms, xs_w, xt_w), paste(ms, xs_w, xt_s), paste(ms, ys, y_hat)

    out_s, out_w = model(xm_s), model(xm_w)  # steps 7 and 5, as the authors forward them
    p_w = out_w.main.detach().softmax(1)
    confidence, arg_w = p_w.max(1)
    mt = confidence > m.t_max
    y_w = arg_w.masked_fill(~mt, IGNORE)
    y_aux = (p_w + out_w.aux.detach().softmax(1)).argmax(1)

    terms["st"], terms["st_aux"] = ce(out_s.main, ym), ce(out_s.aux, y_aux)  # step 7
    facts = {"M^t partial": bool(mt.any() and not mt.all())}
    if edge:  # §5 on M^s, skipped for the batch when one image's band is empty (§8.4c)
        b_s = band(ms)
        facts["M^s bands all non-empty"] = bool(b_s.flatten(1).any(1).all())
        if not facts["M^s bands all non-empty"]:
            b_s = torch.zeros_like(b_s)  # a skipped term contributes nothing: hqtd reports 0
        terms["st_edge"] = masked_ce(out_s.main, ym, b_s)
        terms["st_aux_edge"] = masked_ce(out_s.aux, y_aux, b_s)

    if edge:  # step 6 with §5: M^t of the unmixed weak crop (no grad), united with M^s
        with torch.no_grad():
            p_c = model(xt_w).main.softmax(1)
        c_conf, c_arg = p_c.max(1)
        mc = c_conf > m.t_max
        y_c = c_arg.masked_fill(~mc, IGNORE)
        paste_mask, paste_label = mc | ms, paste(ms, ys, y_c)
    else:
        paste_mask, paste_label = mt, y_w
    x_ts, y_ts = paste(paste_mask, xm_s, xs_s), paste(paste_mask, paste_label, ys)
    out_ts = model(x_ts)
    terms["mix"] = ce(out_ts.main[:1], y_ts[:1])  # the authors' first image only
    if edge:
        b_t = band(mc) & ~ms
        facts["t2s bands all non-empty"] = bool(b_t.flatten(1).any(1).all())
        if not facts["t2s bands all non-empty"]:
            b_t = torch.zeros_like(b_t)
        terms["mix_edge"] = masked_ce(out_ts.main[:1], y_ts[:1], b_t[:1])
        y_ts_aux = paste(paste_mask, paste(ms, ys, y_aux), ys)  # §8.4b
        terms["mix_aux"] = ce(out_ts.aux[:1], y_ts_aux[:1])

    grid = out_s.main_small.shape[-2:]  # steps 8-10 on the stride-8 logits
    pixel = []
    for zs, zw in zip(out_s.main_small, out_w.main_small, strict=True):
        qs, qw = zs.flatten(1).T.softmax(1), zw.flatten(1).T.softmax(1)
        pixel.append(info_nce(qs, qw, m.tau_pix))
    terms["pix"] = torch.stack(pixel).mean()
    y_con = to_grid(paste(ms, ys, y_c if edge else y_w), grid)  # §8.4a: the crop's labels
    facts["y^c of image 0 differs from the one of y^w"] = not torch.equal(
        y_con[0], to_grid(paste(ms, ys, y_w), grid)[0]
    )
    protos_s, protos_w = [], []
    for c in y_con[0].unique().tolist():  # the authors' slip: the first image only
        if c != IGNORE:
            where = y_con[0] == c
            protos_s.append(out_s.main_small[0][:, where].mean(1).softmax(0))
            protos_w.append(out_w.main_small[0][:, where].mean(1).softmax(0))
    facts["prototypes"] = len(protos_s)
    batch = len(ys)
    terms["proto"] = info_nce(torch.stack(protos_s), torch.stack(protos_w), m.tau_proto) / batch

    # Step 11 (and §5, §8.4b): L_src + 0.1 L_src,aux + λ_st(L_st + λ_aux L_st,aux) + λ_mix L_mix
    # + λ_cl(L_pix + L_proto) [+ λ_st(L_st,e + λ_aux L_st,aux,e) + λ_mix² L_mix,e
    # + λ_st λ_aux λ_mix L_mix,aux]
    total = (
        terms["src"]
        + cfg.train.aux_weight * terms["src_aux"]
        + m.lambda_st * (terms["st"] + m.lambda_aux * terms["st_aux"])
        + m.lambda_mix * terms["mix"]
        + m.lambda_cl * (terms["pix"] + terms["proto"])
    )
    if edge:
        total = (
            total
            + m.lambda_st * (terms["st_edge"] + m.lambda_aux * terms["st_aux_edge"])
            + m.lambda_mix**2 * terms["mix_edge"]
            + m.lambda_st * m.lambda_aux * m.lambda_mix * terms["mix_aux"]
        )
    facts["candidates differ from the correct set"] = any(
        authors_candidates(label) != sorted(v for v in label.unique().tolist() if 4 < v < IGNORE)
        for label in ys
    )
    return terms, total, facts


def compare(variant: str, monkeypatch, paste_in_second: bool = True) -> dict:
    cfg = method_config(variant)
    torch.manual_seed(0)
    student = TinySeg().double().train()
    twin = copy.deepcopy(student)
    source, target = batches(paste_in_second)
    result, grads, draws = run_hqtd(student, cfg, source, target, monkeypatch)

    terms, total, facts = reference(twin, cfg, source, target, draws)
    total.backward()
    expected = {name: value.item() for name, value in terms.items()} | {"total": total.item()}
    assert set(result.terms) == set(expected)
    for name, value in result.terms.items():
        assert value == pytest.approx(expected[name], rel=1e-10, abs=1e-12), name
    torch.testing.assert_close(result.loss, total.detach(), **TOL)
    for name, grad, param in zip(
        (n for n, _ in twin.named_parameters()), grads, twin.parameters(), strict=True
    ):
        torch.testing.assert_close(grad, param.grad, **TOL, msg=name)
        assert param.grad.abs().sum() > 0, name
    return facts


def test_official_iteration_equals_the_float64_reference(monkeypatch):
    facts = compare("official", monkeypatch)
    # The fixture exercises what the test claims: a partly confident M^t, the quirk's candidate
    # set differing from the correct one, and more than one prototype in image 0.
    assert facts["M^t partial"] and facts["candidates differ from the correct set"]
    assert facts["prototypes"] > 1


def test_official_edge_iteration_equals_the_float64_reference(monkeypatch):
    facts = compare("official_edge", monkeypatch)
    assert facts["M^s bands all non-empty"] and facts["t2s bands all non-empty"]
    assert facts["y^c of image 0 differs from the one of y^w"]  # §8.4a is seen by L_proto
    assert facts["prototypes"] > 1


def test_official_edge_skips_the_bands_of_the_whole_batch_when_one_is_empty(monkeypatch):
    facts = compare("official_edge", monkeypatch, paste_in_second=False)
    assert not facts["M^s bands all non-empty"]  # image 1 pastes nothing: st bands skipped


def test_edge_code_switch_changes_exactly_its_terms():
    # full_edge (hqtd's clean edge) vs the same with quirk_edge_code: y^c (proto), the aux CE on
    # x^{ts}; with both bands non-empty in this fixture the band terms stay the same.
    def terms(**changes):
        cfg = method_config("full_edge")
        cfg.method = replace(cfg.method, **changes)
        torch.manual_seed(0)
        student = TinySeg().double().train()
        source, target = batches()
        generator = torch.Generator().manual_seed(0)
        result = step.adaptation_step(
            student, ModelEMA(student), source, target, *step_settings(cfg), generator
        )
        return result.terms

    clean, authors = terms(), terms(quirk_edge_code=True)
    assert set(authors) - set(clean) == {"mix_aux"}
    differing = {k for k in clean if k != "total" and clean[k] != authors[k]}
    assert differing == {"proto"}


# ----------------------------------------------------------------------------------------------
# EMA and validation cadence (METHOD.md §8.5) in the training loop

TINY = [*TRAIN_TINY, "train.eval_every=1000", "method=full"]  # test_train's tiny sizes


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared mini benchmark of 5 source (GTA5), 7 target-train and 2 target-val images."""
    root = tmp_path_factory.mktemp("data")
    generate(root / "raw", seed=0, counts=Counts(5, 1, 7, 2), workers=1)
    for raw, kind in (("mini_gta5", "gta5"), ("mini_cityscapes", "cityscapes")):
        prepare(kind, root / "raw" / raw, root / "prepared" / raw, workers=1)
    return root


@pytest.fixture(scope="module")
def source_checkpoint(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "source_only"
    args = [f"data_root={data_root}", f"run_dir={run_dir}", *TINY, "method=source_only"]
    train(load_config([*args, "train.source_only_iterations=2"]))
    return run_dir / "checkpoints" / "last.pt"


def adapt_config(data_root: Path, run_dir: Path, init: Path, *extra: str):
    args = [f"data_root={data_root}", f"run_dir={run_dir}", f"train.init_checkpoint={init}"]
    return load_config([*args, *TINY, *extra])


def read_iterations(path: Path) -> list[int]:
    import json

    return [json.loads(line)["iteration"] for line in path.read_text().splitlines()]


def test_epoch_length_is_the_authors_drop_last_formula(data_root, source_checkpoint, tmp_path):
    cfg = adapt_config(data_root, tmp_path, source_checkpoint)
    # min(5 // 2, 7 // 2) = 2 (without drop_last it would be min(3, 4) = 3)
    assert epoch_length(cfg, [5, 7], world_size=1) == 2
    assert epoch_length(cfg, [5, 7], world_size=2) == 1  # global batch 4: min(1, 1)
    with pytest.raises(HqtdError, match="no full batch"):
        epoch_length(cfg, [1, 7], world_size=1)


def test_eval_per_epoch_validates_at_epoch_ends(data_root, source_checkpoint, tmp_path):
    extra = ("train.iterations=7", "train.eval_per_epoch=true", "train.checkpoint_every=7")
    train(adapt_config(data_root, tmp_path, source_checkpoint, *extra))
    # epoch = min(5 // 2, 7 // 2) = 2: validation after 2, 4, 6 and the last iteration 7
    assert read_iterations(tmp_path / "val_log.jsonl") == [2, 4, 6, 7]
    assert load_checkpoint(tmp_path / "checkpoints" / "best.pt")["iteration"] in (2, 4, 6, 7)


def record_checkpoints(monkeypatch) -> dict[int, dict]:
    """Every last.pt the loop saves, by iteration (copies of the model and EMA states)."""
    saved = {}
    original = hqtd.training.run_log.save_checkpoint

    def spy(path: Path, state: dict) -> None:
        if path.name == "last.pt":
            keep = {k: copy.deepcopy(state[k]) for k in ("model", "ema")}
            saved[state["iteration"]] = keep
        original(path, state)

    monkeypatch.setattr(hqtd.training.run_log, "save_checkpoint", spy)
    return saved


def buffer_names(config) -> list[str]:
    """The network's saved buffers (BatchNorm statistics and counters)."""
    model = build_model(config.model)
    return [name for name, _ in model.named_buffers() if name in model.state_dict()]


@pytest.mark.parametrize("per_epoch", [False, True])
def test_ema_batchnorm_buffers_change_only_at_epoch_ends(
    data_root, source_checkpoint, tmp_path, monkeypatch, per_epoch
):
    saved = record_checkpoints(monkeypatch)
    extra = ("train.iterations=5", "train.checkpoint_every=1")
    config = adapt_config(
        data_root, tmp_path, source_checkpoint, *extra,
        f"method.quirk_ema_bn_per_epoch={str(per_epoch).lower()}",
    )  # fmt: skip
    train(config)
    start = build_model(config.model)
    load_weights(start, source_checkpoint)
    names = buffer_names(config)
    for iteration in range(1, 6):
        ema = saved[iteration]["ema"]
        if per_epoch:  # epoch = min(5 // 2, 7 // 2) = 2: copies after iterations 2 and 4
            last_copy = 2 * (iteration // 2)
            source = saved[last_copy]["model"] if last_copy else start.state_dict()
        else:
            source = saved[iteration]["model"]
        for name in names:
            assert torch.equal(ema[name], source[name]), (iteration, name)
    # The copies are not vacuous: the student's statistics move every iteration.
    assert not torch.equal(saved[3]["model"][names[0]], saved[2]["model"][names[0]])


def test_an_epoch_end_buffer_copy_survives_a_resume(
    data_root, source_checkpoint, tmp_path, monkeypatch
):
    # batch 1: epoch = min(5, 7) = 5. The run is interrupted after its checkpoint at 6, whose EMA
    # holds the buffers copied at 5; iterations 7 and 8 copy nothing, so the final EMA buffers are
    # those of iteration 5 only if the resume restored them from the checkpoint.
    extra = (
        "train.iterations=8",
        "train.checkpoint_every=6",
        "train.batch_size=1",
        "train.eval_per_epoch=true",
        "method.quirk_ema_bn_per_epoch=true",
    )
    reference = tmp_path / "reference"
    train(adapt_config(data_root, reference, source_checkpoint, *extra))

    interrupted = tmp_path / "interrupted"
    check_finite = hqtd.train.check_finite

    def stop_at_7(loss, terms, iteration, runtime, run_dir):
        if iteration == 7:
            raise KeyboardInterrupt
        check_finite(loss, terms, iteration, runtime, run_dir)

    monkeypatch.setattr(hqtd.train, "check_finite", stop_at_7)
    with pytest.raises(KeyboardInterrupt):
        train(adapt_config(data_root, interrupted, source_checkpoint, *extra))
    assert load_checkpoint(interrupted / "checkpoints" / "last.pt")["iteration"] == 6
    monkeypatch.setattr(hqtd.train, "check_finite", check_finite)
    train(adapt_config(data_root, interrupted, source_checkpoint, *extra))

    a = load_checkpoint(reference / "checkpoints" / "last.pt")
    b = load_checkpoint(interrupted / "checkpoints" / "last.pt")
    assert a["ema"].keys() == b["ema"].keys()
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
    assert read_iterations(reference / "val_log.jsonl") == [5, 8]
    names = buffer_names(adapt_config(data_root, reference, source_checkpoint))
    assert not torch.equal(a["ema"][names[0]], a["model"][names[0]])  # stale since iteration 5


@pytest.mark.parametrize("from_init", [False, True])
def test_ema_from_init_averages_the_fresh_network_into_the_first_step(
    data_root, source_checkpoint, tmp_path, from_init
):
    extra = ("train.iterations=1", f"method.quirk_ema_from_init={str(from_init).lower()}")
    config = adapt_config(data_root, tmp_path, source_checkpoint, *extra)
    # The EMA's start: the network as built (random init: model.init is null) or the checkpoint.
    torch.manual_seed(config.seed)
    start = build_model(config.model)
    if not from_init:
        load_weights(start, source_checkpoint)
    model, ema = initial_model(config)
    loaded = build_model(config.model)
    load_weights(loaded, source_checkpoint)
    for name, value in ema.module.state_dict().items():
        assert torch.equal(value, start.state_dict()[name]), name
    for name, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[name]), name

    train(config)
    after = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    decay = config.method.ema_decay
    for name, param in start.named_parameters():
        expected = decay * param.detach() + (1 - decay) * after["model"][name]
        torch.testing.assert_close(after["ema"][name], expected, rtol=1e-5, atol=1e-7)
    differs = any(not torch.equal(p, loaded.state_dict()[n]) for n, p in start.named_parameters())
    assert differs == from_init
