"""Typed configuration: Hydra structured configs composed from the YAML files under ``params/``.

``params/config.yaml`` extends the :class:`Config` schema, so every group file merged into it is
checked: an unknown key or a value of the wrong type fails composition with a one-line
:class:`~hqtd.errors.HqtdError` naming the key. Every reader of ``params/`` (training, the grid,
evaluation of a saved run, ``dvc.yaml``) composes through :func:`_composed`; the benchmark,
method and protocol sections are named after the files chosen, which carry no ``name:``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from hqtd.errors import HqtdError

#: The repository's ``params/``, next to the package (a checkout: ``pip install -e .``).
PARAMS_DIR = Path(__file__).resolve().parent.parent / "params"
#: Environment variable naming another params folder (e.g. a copy with a new method file).
PARAMS_ENV = "HQTD_PARAMS"
#: Groups whose chosen file names the section (``method=full`` -> ``method.name: full``).
NAMED_GROUPS = ("benchmark", "method", "protocol")
#: ``KEY=VALUE`` arguments of ``hqtd evaluate``/``predict`` that are not config keys.
COMMAND_OPTIONS = ("out", "input", "overlay")


def params_dir() -> Path:
    """The Hydra config root: ``$HQTD_PARAMS`` when set, else the repository's ``params/``.

    Raises:
        HqtdError: no ``config.yaml`` there (e.g. hqtd installed from a wheel, without its
            repository): one line saying how to install.
    """
    path = Path(os.environ[PARAMS_ENV]) if os.environ.get(PARAMS_ENV) else PARAMS_DIR
    if not (path / "config.yaml").is_file():
        raise HqtdError(
            f"{path / 'config.yaml'} not found: hqtd reads params/ from its repository; install "
            f"it from a clone with `pip install -e <clone>` (or set {PARAMS_ENV}=<clone>/params)"
        )
    return path


class Backbone(StrEnum):
    resnet101 = "resnet101"  # DeepLab-V2 ResNet-101, the paper's network
    mini = "mini"  # small dilated ResNet for the embedded benchmark, trained from scratch


class InputStyle(StrEnum):
    caffe = "caffe"  # BGR, 0-255, minus the caffe mean (the authors' init and checkpoints)
    torchvision = "torchvision"  # RGB, 0-1, ImageNet mean/std (torchvision weights)


class Stage(StrEnum):
    source_only = "source_only"  # supervised on source (METHOD.md §3.1)
    oracle = "oracle"  # supervised on target labels (mini benchmark upper bound)
    adapt = "adapt"  # the adaptation iteration of METHOD.md §4


class PseudoLabelModel(StrEnum):
    student = "student"
    ema = "ema"


class Precision(StrEnum):
    fp32 = "fp32"
    bf16 = "bf16"


class Augmentation(StrEnum):
    torchvision = "torchvision"  # hqtd's views: float jitter as factors, antialiased resizes
    authors = "authors"  # the authors' albumentations-1.1.0 ops on uint8 (METHOD.md §8.6)


class Weights(StrEnum):
    """Which weights of a checkpoint file to use (an hqtd file's ``model``/``ema``, an authors'
    file's ``state_dict``/``shadow``)."""

    auto = "auto"  # scoring: the EMA; init: hqtd's EMA, an authors' file's state_dict (as they do)
    ema = "ema"
    student = "student"


class Determinism(StrEnum):
    default = "default"  # torch picks CPU kernels for this machine: fastest, bits vary by CPU model
    portable = "portable"  # kernels pinned so that x86-64 CPUs with AVX2 give the same bits


class OnChange(StrEnum):
    """What ``hqtd train`` does with a run directory that holds another computation (config,
    code, data or initial weights differ from the command's)."""

    refuse = "refuse"  # stop with one line naming what differs
    restart = "restart"  # delete the old run's training outputs and train from scratch


class CheckpointRule(StrEnum):
    best = "best"  # best EMA checkpoint on target val (the authors' selection)
    last = "last"  # last-iteration EMA weights


@dataclass
class ModelConfig:
    backbone: Backbone = Backbone.resnet101
    num_classes: int = 19
    aspp_branches: int = 4  # 2 reproduces the authors' early-returning ASPP
    input_style: InputStyle = InputStyle.caffe
    caffe_stride: bool = True  # stride on the first 1x1 conv and ceil-mode max-pool (caffe ResNet)
    mini_width: int = 16  # stem width of the mini backbone (stages: w, 2w, 4w, 4w)
    # ImageNet init: a file (authors' caffe or torchvision layout), "torchvision" (torchvision's
    # ResNet-101 file in the torch cache), "scratch" (random); None only for the mini benchmarks
    init: str | None = None
    align_corners: bool = False  # bilinear upsampling of the logits; True as the authors (§8.1)


@dataclass
class DatasetConfig:
    root: str = MISSING  # prepared dataset folder holding manifest.json
    split: str = "train"


@dataclass
class BenchmarkConfig:
    name: str = MISSING  # the params file composed (load_config), not set in the file
    source: DatasetConfig = field(default_factory=DatasetConfig)
    target: DatasetConfig = field(default_factory=DatasetConfig)
    target_val: DatasetConfig = field(default_factory=DatasetConfig)
    num_classes: int = 19
    source_size: tuple[int, int] = (1280, 720)  # (W, H) after resizing
    target_size: tuple[int, int] = (1280, 640)
    crop_size: int = 512
    mini: bool = False  # an embedded mini benchmark (enables the oracle variant)


@dataclass
class MethodConfig:
    name: str = MISSING  # the params file composed (load_config), not set in the file
    stage: Stage = Stage.adapt
    self_training: bool = True  # steps 4, 5, 7: ClassMix + self-training on the strong view
    t2s: bool = False  # step 6: target->source mix
    pixel: bool = False  # step 9: pixel-level contrastive loss
    proto: bool = False  # step 10: prototype-level contrastive loss
    edge: bool = False  # §5: edge enhancement
    lambda_st: float = 0.1
    lambda_aux: float = 0.1
    lambda_mix: float = 0.1
    lambda_cl: float = 0.01  # 0.008 for SYNTHIA: the benchmark chooses params/loss_weights/
    t_max: float = 0.95
    tau_pix: float = 0.05
    tau_proto: float = 1.0 / 7.0
    ema_decay: float = 0.999
    pseudo_label_model: PseudoLabelModel = PseudoLabelModel.student
    quirk_classmix_offset: bool = False  # authors' off-by-one ClassMix candidate set
    quirk_t2s_first_image: bool = False  # authors apply L_mix to the first image only
    quirk_proto_first_image: bool = False  # authors' prototype loss sees the first image only
    quirk_edge_code: bool = False  # with edge: the authors' edge code exactly (METHOD.md §8.4 a-c)
    quirk_ema_bn_per_epoch: bool = False  # BN buffers copied into the EMA once per epoch (§8.5)
    quirk_ema_from_init: bool = False  # EMA built before the source checkpoint is loaded (§8.5)
    augmentation: Augmentation = Augmentation.torchvision  # views and dataset resize (§8.6)
    source_method: str = "source_only"  # the supervised run adaptation starts from (§8.3)


@dataclass
class TrainConfig:
    iterations: int = 250_000  # adaptation
    source_only_iterations: int = 120_000  # source-only pretraining and the oracle
    batch_size: int = 2  # per domain: 2 source + 2 target
    lr: float = 2.5e-4
    head_lr_mult: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    aux_weight: float = 0.1
    checkpoint_every: int = 2000
    eval_every: int = 2000
    log_every: int = 50
    init_checkpoint: str | None = None  # source-only checkpoint that adaptation starts from
    init_weights: Weights = Weights.auto  # which weights of init_checkpoint (§8.2)
    eval_per_epoch: bool = False  # validate and keep the best every epoch of min(source, target)
    # batches instead of every eval_every iterations (the authors' cadence, METHOD.md §8.5)
    precision: Precision = Precision.fp32
    channels_last: bool = False
    device: str = "auto"  # auto | cpu | cuda
    num_workers: int = 4
    threads: int = 0  # torch intra-op threads, 0 = torch default
    determinism: Determinism = Determinism.default  # CPU kernel pinning (README, determinism)
    on_change: OnChange = OnChange.refuse  # run_dir holds another computation (hqtd.train)
    # Pseudo-label diagnostics at each validation on this many fixed labelled target-train images
    # (hqtd.adapt.diagnostics; adaptation only); 0 = off. They leave training unchanged.
    diagnostics: int = 0


@dataclass
class ProtocolConfig:
    name: str = MISSING  # the params file composed (load_config), not set in the file
    resize_labels: bool = True  # paper: labels resized to benchmark.target_size; strict: full size
    checkpoint: CheckpointRule = CheckpointRule.best


@dataclass
class ScoringConfig:
    """What ``hqtd evaluate`` measures besides mIoU, and its bootstrap intervals (issue 14)."""

    # Boundary IoU width d as a fraction of the label image's diagonal: Cheng et al.'s 0.02
    # (29 px at 1280x640, 46 px at 2048x1024, 4 px at the mini 192x96), so it scales with the
    # protocol's label size instead of meaning something else at every resolution.
    boundary_dilation_ratio: float = 0.02
    trimap_widths: list[int] = field(default_factory=lambda: [4, 8, 16])  # band widths, px
    bootstrap_draws: int = 1000  # resamples of the val images (and seeds) per interval
    confidence: float = 0.95  # of the percentile intervals
    bootstrap_seed: int = 0  # the resampling's RNG seed (intervals are reproducible)


def checked_scoring(scoring: ScoringConfig, where: str = "scoring") -> ScoringConfig:
    """``scoring`` unchanged, or a one-line error naming the first key out of range.

    Raises:
        HqtdError: a non-positive ratio, width or draw count, or a confidence outside (0, 1).
    """
    problems = {  # key -> (out of range, what was expected)
        "boundary_dilation_ratio": (scoring.boundary_dilation_ratio <= 0, "a ratio > 0"),
        "trimap_widths": (any(w < 1 for w in scoring.trimap_widths), "widths >= 1 px"),
        "bootstrap_draws": (scoring.bootstrap_draws < 1, "at least 1 draw"),
        "confidence": (not 0 < scoring.confidence < 1, "a level in (0, 1)"),
    }
    for key, (bad, expected) in problems.items():
        if bad:
            raise HqtdError(f"{where}.{key}={getattr(scoring, key)}: expected {expected}")
    return scoring


@dataclass
class Config:
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    seed: int = 0
    data_root: str = "data"  # raw datasets in data_root/raw, prepared ones in data_root/prepared
    run_dir: str = MISSING
    checkpoint: str | None = None  # evaluate: a checkpoint file instead of the run's own
    weights: Weights = Weights.auto  # evaluate: which weights of the checkpoint are scored (§8.2)


ConfigStore.instance().store(name="hqtd_schema", node=Config)


def _one_line(error: BaseException) -> str:
    """One line from a Hydra/OmegaConf error and its cause (both append multi-line context)."""
    lines = [str(error).strip().splitlines()[0]]
    if error.__cause__ is not None:
        lines.append(str(error.__cause__).strip().splitlines()[0])
    if "Could not find" in lines[0]:  # name the options the user can choose from
        options = [line.strip() for line in str(error).splitlines() if line.startswith("\t")]
        options = [o for o in options if not o.startswith("provider=")]
        lines.append("available: " + ", ".join(options))
    return ": ".join(lines)


def quote_spaces(override: str) -> str:
    """``KEY=VALUE`` with a VALUE holding whitespace quoted for Hydra's override grammar (whose
    lexer rejects unquoted spaces: ``run_dir="my runs/a"`` reaches hqtd without its quotes)."""
    key, sep, value = override.partition("=")
    if not sep or not any(c.isspace() for c in value) or value[:1] in ("'", '"'):
        return override
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"{key}='{escaped}'"


def check_ranges(config: Config) -> None:
    """Refuse values outside their range and inconsistent fields, before anything is written.

    Raises:
        HqtdError: the first offending key, its value and what was expected.
    """
    tc, bench = config.train, config.benchmark
    positive = {
        "train.iterations": tc.iterations,
        "train.source_only_iterations": tc.source_only_iterations,
        "train.batch_size": tc.batch_size,
        "train.checkpoint_every": tc.checkpoint_every,
        "train.eval_every": tc.eval_every,
        "train.log_every": tc.log_every,
        "train.lr": tc.lr,
        "benchmark.crop_size": bench.crop_size,
        "benchmark.num_classes": bench.num_classes,
        "model.num_classes": config.model.num_classes,
    }
    positive |= {f"benchmark.source_size[{i}]": v for i, v in enumerate(bench.source_size)}
    positive |= {f"benchmark.target_size[{i}]": v for i, v in enumerate(bench.target_size)}
    not_negative = {
        "seed": config.seed,
        "train.num_workers": tc.num_workers,
        "train.threads": tc.threads,
        "train.weight_decay": tc.weight_decay,
        "train.momentum": tc.momentum,
        "train.diagnostics": tc.diagnostics,
    }
    for key, value in positive.items():
        if not value > 0:
            raise HqtdError(f"{key}={value}: expected a value greater than 0")
    for key, value in not_negative.items():
        if not value >= 0:
            raise HqtdError(f"{key}={value}: expected a value of 0 or more")
    if config.model.num_classes != bench.num_classes:
        raise HqtdError(
            f"model.num_classes={config.model.num_classes}: benchmark={bench.name} has "
            f"{bench.num_classes} classes (benchmark.num_classes); expected the same number"
        )
    smallest = min(*bench.source_size, *bench.target_size)
    if bench.crop_size > smallest:
        raise HqtdError(
            f"benchmark.crop_size={bench.crop_size}: larger than the smallest training image side "
            f"({smallest} px of benchmark.source_size {list(bench.source_size)} / target_size "
            f"{list(bench.target_size)}); expected at most {smallest}, crops are not upsampled"
        )


def load_config(overrides: list[str]) -> Config:
    """Compose ``params/config.yaml`` and Hydra ``KEY=VALUE`` overrides into a :class:`Config`
    and check its ranges (:func:`check_ranges`).

    Raises:
        HqtdError: an unknown key, a wrong type, an unknown group option, a missing value or a
            value out of range.
    """
    return _composed("config", overrides)[0]


def params_choices(overrides: list[str]) -> dict[str, str]:
    """Group -> option of every params group file that ``hqtd train overrides`` composes, by
    group name (``{"benchmark": "mini_gta5", "loss_weights": "paper_x10", ...}``, i.e.
    ``params/<group>/<option>.yaml``; ``params/config.yaml`` gives the order they merge in).

    Raises:
        HqtdError: as :func:`load_config`.
    """
    return _composed("config", overrides)[1]


def _composed(primary: str, overrides: list[str]) -> tuple[Config, dict[str, str]]:
    """The one reader of ``params/``: Hydra composes ``primary`` (``params/config.yaml``, or a
    saved run's config, :func:`evaluation_config`) with ``overrides`` into the typed schema; each
    section of :data:`NAMED_GROUPS` is named after the file chosen for it.

    Returns:
        The checked config and the chosen group files (group -> option).
    """
    folder = params_dir()
    try:
        with initialize_config_dir(config_dir=str(folder), version_base="1.3"):
            overrides = [quote_spaces(override) for override in overrides]
            composed = compose(primary, overrides=overrides, return_hydra_config=True)
        choices = _params_choices(composed, folder)
        with open_dict(composed):
            del composed["hydra"]
        for group in NAMED_GROUPS:
            if group in choices:
                composed[group].name = choices[group]
        OmegaConf.resolve(composed)
        missing = sorted(OmegaConf.missing_keys(composed))
        if missing:
            raise HqtdError(f"missing required config value(s): {', '.join(missing)}")
        config = OmegaConf.to_object(composed)
    except (HydraException, OmegaConfBaseException, ValueError) as error:
        raise HqtdError(f"bad configuration: {_one_line(error)}") from None
    assert isinstance(config, Config)
    check_ranges(config)
    return config, choices


def _params_choices(composed: DictConfig, folder: Path) -> dict[str, str]:
    """The params group files Hydra chose (its own ``hydra/*`` groups left out)."""
    choices = composed.hydra.runtime.choices
    return {
        group: str(option)
        for group, option in sorted(choices.items())
        if option is not None and (folder / group).is_dir()
    }


def to_yaml(config: Config) -> str:
    """The resolved configuration as YAML (saved in every run directory)."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def from_yaml(path: Path) -> Config:
    """Read a configuration saved by :func:`to_yaml`, validated against the schema."""
    try:
        loaded = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(path))
        config = OmegaConf.to_object(loaded)
    except (OmegaConfBaseException, OSError, ValueError) as error:
        raise HqtdError(f"{path}: not a valid hqtd config: {_one_line(error)}") from None
    assert isinstance(config, Config)
    return config


#: The authors' caffe-converted ImageNet ResNet-101 (their README's download), METHOD.md §2.
AUTHORS_INIT_FILE = "DeepLab_resnet_pretrained_init-f81d91e8.pth"
#: torchvision's ImageNet ResNet-101 (IMAGENET1K_V1), as torch.hub caches it.
TORCHVISION_INIT_FILE = "resnet101-63fe2227.pth"
#: ``model.init`` values that are not files.
INIT_SCRATCH, INIT_TORCHVISION = "scratch", "torchvision"


def torch_cache_dir() -> Path:
    """torch.hub's directory (``$TORCH_HOME``, else ``$XDG_CACHE_HOME/torch``, else
    ``~/.cache/torch``) without importing torch (Snakemake reads it)."""
    if "TORCH_HOME" in os.environ:
        return Path(os.environ["TORCH_HOME"])
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "torch"


def init_file(model: ModelConfig) -> Path | None:
    """The file ``model.init`` names (``torchvision``: the torch cache's ResNet-101 file), None
    for ``scratch`` and for no init."""
    if model.init in (None, INIT_SCRATCH):
        return None
    if model.init == INIT_TORCHVISION:
        return torch_cache_dir() / "hub" / "checkpoints" / TORCHVISION_INIT_FILE
    return Path(model.init)


def check_init(config: Config) -> None:
    """A real-data run never starts from random weights unless ``model.init=scratch`` says so:
    a set init file must exist (adaptation runs start from ``train.init_checkpoint``).

    Raises:
        HqtdError: one line saying which file to put where (or how to opt out).
    """
    model = config.model
    if model.init == INIT_TORCHVISION and model.input_style is not InputStyle.torchvision:
        raise HqtdError("model.init=torchvision needs model.input_style=torchvision")
    path = init_file(model)
    if path is None:
        # adaptation starts from train.init_checkpoint (model.init only under quirk_ema_from_init)
        if model.init is None and not (config.benchmark.mini or config.train.init_checkpoint):
            raise HqtdError(
                f"benchmark {config.benchmark.name}: model.init is not set; expected an ImageNet "
                f"file (e.g. model.init=data/pretrained/{AUTHORS_INIT_FILE}), "
                "model.init=torchvision or model.init=scratch"
            )
    elif not path.is_file():
        raise HqtdError(f"model.init: {path} not found; {_init_hint(model)}")


def _init_hint(model: ModelConfig) -> str:
    """Where the missing init file comes from (README, pretrained weights)."""
    if model.init == INIT_TORCHVISION:
        return (
            "download it once with python -c 'import torchvision; "
            'torchvision.models.resnet101(weights="IMAGENET1K_V1")\' (or model.init=scratch)'
        )
    return (
        f"put the authors' ImageNet init {AUTHORS_INIT_FILE} there (README, pretrained weights), "
        "or set model.init=torchvision (with model.input_style=torchvision) or model.init=scratch"
    )


def split_overrides(arguments: list[str]) -> tuple[dict[str, Override], dict[str, str]]:
    """``KEY=VALUE`` arguments, parsed by Hydra's override grammar (the one :func:`load_config`
    applies), split into config overrides (key -> override) and :data:`COMMAND_OPTIONS`
    (key -> value); the last of a repeated key wins.

    Raises:
        HqtdError: an argument that is not ``KEY=VALUE``.
    """
    quoted = [quote_spaces(argument) for argument in arguments]
    try:
        parsed = OverridesParser.create().parse_overrides(quoted)
    except HydraException as error:
        raise HqtdError(f"bad override: {_one_line(error)} (expected KEY=VALUE)") from None
    overrides = {o.key_or_group: o for o in parsed if o.key_or_group not in COMMAND_OPTIONS}
    options = {o.key_or_group: str(o.value()) for o in parsed if o.key_or_group in COMMAND_OPTIONS}
    return overrides, options


#: ConfigStore names of the saved run that :func:`evaluation_config` composes on.
SAVED_RUN, EVALUATED_RUN = "saved_run", "evaluated_run"


def evaluation_config(arguments: list[str]) -> Config:
    """The run's saved ``config.yaml`` with the command's overrides applied, composed by Hydra:
    ``protocol=NAME`` selects ``params/protocol/NAME.yaml``, any other ``key=value``
    (``checkpoint=FILE``, ``train.device=cpu``, ...) sets a key of the typed schema;
    :data:`COMMAND_OPTIONS` are left out. Without ``run_dir=DIR``: ``checkpoint=FILE
    benchmark=NAME`` (:func:`_checkpoint_config`).

    Raises:
        HqtdError: no saved config in ``run_dir``, or overrides it cannot take.
    """
    overrides, _ = split_overrides(arguments)
    if "run_dir" not in overrides:
        return _checkpoint_config(overrides)
    saved = Path(str(overrides["run_dir"].value())) / "config.yaml"
    if not saved.is_file():
        raise HqtdError(f"{saved}: not found (run_dir must be a training run directory)")
    store = ConfigStore.instance()
    store.store(name=SAVED_RUN, node=OmegaConf.structured(from_yaml(saved)))
    store.store(name=EVALUATED_RUN, node={"defaults": [SAVED_RUN, {"protocol": None}, "_self_"]})
    return _composed(EVALUATED_RUN, [o.input_line for o in overrides.values()])[0]


def _checkpoint_config(overrides: dict[str, Override]) -> Config:
    """The config scoring a checkpoint from anywhere: ``params/`` composed with the overrides
    (``benchmark=``, optionally ``method=``, ``model.*``, ``protocol=``), ``run_dir`` empty."""
    if "checkpoint" not in overrides or "benchmark" not in overrides:
        raise HqtdError(
            "expected run_dir=DIR (a training run directory) or checkpoint=FILE benchmark=NAME"
        )
    return load_config([*(o.input_line for o in overrides.values()), "run_dir=''"])
