"""Adaptation step overhead: one full training iteration vs the model passes it needs, on CPU.

The iteration is the body of hqtd.train's loop for method=full on the mini_gta5 configuration
(mini model, batch 2 source + 2 target at the sizes params/benchmark/mini_gta5.yaml sets: the
source read from files pre-resized to 192×108 as params/grid.yaml prepares it, the target from
256×128 files like hqtd synth's, resized on load; 96² crops): next batch from the loaders
train.py builds, ``adaptation_step``, loss check, backward, SGD step, EMA update. The reference
replays the same model calls on the same inputs (recorded from a real iteration: the same images,
grad or no-grad as there) with a plain loss, the sum of the outputs the step's loss used, and one
backward. Everything else is overhead: data, views, mixing, pseudo-labels, losses, optimiser,
EMA. The two run in turn, round after round; the median of the per-round ratios is held to 1.15
(on a shared machine the load changes between rounds, less within one).

First the phases of instrumented iterations are timed (exclusive CPU time: a phase nested in
another is not counted twice) to show where the overhead goes.

    .venv/bin/python -m bench.adapt_step [--quick] [--width N]
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import torch
from tabulate import tabulate
from torch import Tensor, nn

import hqtd.adapt.step as step_module
import hqtd.adapt.views as views_module
from bench.common import Row, finish, parser, sample_times
from bench.fixtures import CACHE, prepared_gta5
from hqtd import train
from hqtd.adapt.ema import ModelEMA
from hqtd.config import Config, load_config
from hqtd.models.deeplabv2 import build_model
from hqtd.runtime import Runtime, autocast, setup_runtime
from hqtd.training import schedule, stage, streams

TARGET_RATIO = 1.15
#: Functions of hqtd.adapt.step and hqtd.adapt.views timed as phases (looked up in their module
#: at call time, so patchable).
PHASES = {
    "views: crop + resize": ("sample_crop_boxes", "crop_resize"),
    "views: strong augment": ("strong_augment",),
    "pseudo-labels": ("pseudo_labels", "confident_labels", "aux_pseudo_labels"),
    "mixing": ("classmix_masks", "mix", "target_to_source", "contrastive_labels", "boundary_band"),
    "CE losses": ("cross_entropy",),
    "pixel InfoNCE": ("pixel_contrastive_loss",),
    "prototype InfoNCE": ("prototype_contrastive_loss",),
    "step, rest": ("adaptation_step",),
}


class PhaseClock:
    """Exclusive seconds per phase name (CPU seconds by default); ``with clock("name"):`` times a
    block, and a block nested in another counts for its own name only."""

    def __init__(self, timer: Callable[[], float] = time.process_time) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._timer = timer
        self._children: list[float] = []

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = self._timer()
        self._children.append(0.0)
        try:
            yield
        finally:
            elapsed = self._timer() - start
            self.seconds[name] += elapsed - self._children.pop()
            if self._children:
                self._children[-1] += elapsed

    def wrap(self, name: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            with self(name):
                return fn(*args, **kwargs)

        return timed

    @contextlib.contextmanager
    def patched(self) -> Iterator[None]:
        """Time the :data:`PHASES` functions of hqtd.adapt.step and .views while the block runs."""
        with contextlib.ExitStack() as stack:
            for phase, names in PHASES.items():
                for name in names:
                    module = step_module if hasattr(step_module, name) else views_module
                    timed = self.wrap(phase, getattr(module, name))
                    stack.enter_context(mock.patch.object(module, name, timed))
            yield


@dataclass
class ModelCall:
    """One call of the model during a step: its input, whether it built a graph, whether it ran
    the aux head, and the output fields (main, aux, main_small) that received a gradient in the
    step's backward."""

    image: Tensor
    grad: bool
    aux: bool = True
    used: set[str] = field(default_factory=set)


class RecordingModel(nn.Module):
    """Wraps the student: times its forward passes and, while ``recording``, records each call."""

    def __init__(self, model: nn.Module, clock: PhaseClock | None = None) -> None:
        super().__init__()
        self.model = model
        self.clock = clock
        self.recording = False
        self.calls: list[ModelCall] = []

    def forward(self, image: Tensor, aux: bool = True):
        with self.clock("model forward") if self.clock else contextlib.nullcontext():
            out = self.model(image, aux=aux)
        if self.recording:
            call = ModelCall(image, torch.is_grad_enabled(), aux)
            for name, tensor in out._asdict().items():
                if tensor is not None and tensor.requires_grad:
                    tensor.register_hook(functools.partial(_mark_used, call.used, name))
            self.calls.append(call)
        return out


def _mark_used(used: set[str], name: str, grad: Tensor) -> None:
    used.add(name)


def model_passes(
    model: nn.Module, calls: list[ModelCall], device: torch.device, cfg: Config, clock=None
) -> Callable[[], None]:
    """The reference: the recorded calls again (with the aux head where the step ran it), a plain
    loss (sum of the used outputs), backward."""
    timed = clock or (lambda name: contextlib.nullcontext())

    def run() -> None:
        model.zero_grad(set_to_none=True)
        terms = []
        with timed("model forward"):
            for call in calls:
                with torch.set_grad_enabled(call.grad), autocast(device, cfg.train.precision):
                    out = model(call.image, aux=call.aux)
                terms += [getattr(out, name).float().sum() for name in sorted(call.used)]
        with timed("backward"):
            torch.stack(terms).sum().backward()

    return run


@dataclass
class Trainer:
    """What the training loop holds for adaptation (see hqtd.train.run)."""

    cfg: Config
    runtime: Runtime
    student: RecordingModel
    ema: ModelEMA
    optimizer: torch.optim.Optimizer
    source: Iterator[dict]
    target: Iterator[dict]
    generator: torch.Generator
    iteration: int = 0

    def step(self, clock: PhaseClock | None = None) -> step_module.StepResult:
        """One iteration of hqtd.train.run's loop body (without logging and checkpoints); returns
        the step's result (its loss and terms)."""
        timed = clock or (lambda name: contextlib.nullcontext())
        cfg, device, model = self.cfg, self.runtime.device, self.student.model
        seed = streams.derive_seed(cfg.seed, streams.STEP_STREAM, 0, self.iteration)
        self.generator.manual_seed(seed)
        with timed("data"):
            batch = streams.to_device(next(self.source), device, cfg.train.channels_last)
            target = streams.to_device(next(self.target), device, cfg.train.channels_last)
        with timed("step, rest"), autocast(device, cfg.train.precision):
            settings = cfg.method, cfg.benchmark.crop_size, cfg.train.aux_weight
            result = step_module.adaptation_step(
                self.student, self.ema, batch, target, *settings, self.generator
            )
        with timed("loss check"):
            train.check_finite(
                result.loss, result.terms, self.iteration + 1, self.runtime, Path(self.cfg.run_dir)
            )
        with timed("backward"):
            self.optimizer.zero_grad(set_to_none=True)
            result.loss.backward()
        with timed("optimizer"):
            self.optimizer.step()
        with timed("EMA"):
            self.ema.update(model)
        self.iteration += 1
        return result


def mini_config(width: int | None = None) -> Config:
    """method=full on mini_gta5 (its loader runs in-process) with the bench's fixtures as data:
    the source pre-resized to its 192×108 as params/grid.yaml prepares it, the target resized on
    load; ``width`` overrides the mini network's channel width (None: as configured)."""
    source = prepared_gta5("mini_gta5_192x108", 8, (256, 144), resize=(192, 108))
    prepared_gta5("mini_cityscapes", 8, (256, 128))
    overrides = ["benchmark=mini_gta5", "method=full", f"data_root={CACHE}", "run_dir=unused",
                 f"benchmark.source.root={source}", "train.device=cpu",
                 "train.threads=1"]  # fmt: skip
    if width is not None:
        overrides.append(f"model.mini_width={width}")
    return load_config(overrides)


def build_trainer(
    cfg: Config, batches: tuple[Iterator[dict], Iterator[dict]] | None = None
) -> Trainer:
    """Model, EMA, optimiser and data streams as hqtd.train.run builds them; ``batches`` (source,
    target) replace the loaders of the configured datasets."""
    runtime = setup_runtime(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model).train()
    ema = ModelEMA(model, cfg.method.ema_decay)
    memory_format = torch.channels_last if cfg.train.channels_last else torch.preserve_format
    model.to(runtime.device, memory_format=memory_format)
    ema.module.to(runtime.device, memory_format=memory_format)
    optimizer, _ = schedule.build_optimizer(model, cfg)
    if batches is None:
        source_set, target_set = stage.stage_datasets(cfg)
        batches = (
            streams.batches(source_set, streams.SOURCE_STREAM, 0, cfg, runtime),
            streams.batches(target_set, streams.TARGET_STREAM, 0, cfg, runtime),
        )
    return Trainer(
        cfg=cfg,
        runtime=runtime,
        student=RecordingModel(model),
        ema=ema,
        optimizer=optimizer,
        source=batches[0],
        target=batches[1],
        generator=torch.Generator(runtime.device),
    )


def record_calls(trainer: Trainer) -> list[ModelCall]:
    """The model calls of one real iteration."""
    trainer.student.recording, trainer.student.calls = True, []
    trainer.step()
    trainer.student.recording = False
    return trainer.student.calls


def breakdown(trainer: Trainer, calls: list[ModelCall], rounds: int):
    """Median exclusive CPU seconds per phase of the iteration and of the reference, the two
    instrumented in turn for ``rounds`` rounds."""
    samples: dict[str, list[float]] = defaultdict(list)
    for _ in range(rounds):
        clock, reference = PhaseClock(), PhaseClock()
        trainer.student.clock = clock
        with clock.patched():
            trainer.step(clock)
        trainer.student.clock = None
        model_passes(trainer.student.model, calls, trainer.runtime.device, trainer.cfg,
                     reference)()  # fmt: skip
        for name, seconds in clock.seconds.items():
            samples[name].append(seconds)
        for name, seconds in reference.seconds.items():
            samples[f"reference: {name}"].append(seconds)
    return {name: statistics.median(values) for name, values in samples.items()}


def variants(trainer: Trainer, calls: list[ModelCall]) -> dict[str, Callable[[], None]]:
    """The iteration and its model passes as configured, and the iteration with its batches
    loaded beforehand (8, round robin): what is left without the cost of loading."""
    loaders = trainer.source, trainer.target
    preloaded = tuple(itertools.cycle([next(stream) for _ in range(8)]) for stream in loaders)

    def iteration(data: tuple[Iterator[dict], Iterator[dict]]) -> Callable[[], None]:
        def call() -> None:
            trainer.source, trainer.target = data
            trainer.step()

        return call

    return {
        "iteration": iteration(loaders),
        "passes": model_passes(trainer.student.model, calls, trainer.runtime.device, trainer.cfg),
        "iteration, batches preloaded": iteration(preloaded),
    }


def print_breakdown(phases: dict[str, float], calls: list[ModelCall]) -> None:
    shapes = ", ".join(
        f"{tuple(call.image.shape)}{'' if call.grad else ' no-grad'}{'' if call.aux else ' no-aux'}"
        f"->{'+'.join(sorted(call.used))}"
        for call in calls
    )
    print(f"method=full, mini_gta5, batch 2+2, one thread; model calls: {shapes}")
    step_phases = {k: v for k, v in phases.items() if not k.startswith("reference: ")}
    total = sum(step_phases.values())
    lines = [[name, f"{s * 1e3:.1f}", f"{s / total:.1%}"] for name, s in
             sorted(step_phases.items(), key=lambda item: -item[1])]  # fmt: skip
    lines.append(["iteration (sum of phases)", f"{total * 1e3:.1f}", ""])
    lines += [[name, f"{s * 1e3:.1f}", ""] for name, s in phases.items() if name not in step_phases]
    print(tabulate(lines, headers=["phase (median exclusive CPU time)", "ms / iteration", "share"]))


def main() -> None:
    parse = parser(__doc__.splitlines()[0])
    parse.add_argument(
        "--width",
        type=int,
        help="mini network width (default: as configured); wider shows the ratio as passes grow",
    )
    args = parse.parse_args()
    trainer = build_trainer(mini_config(args.width))
    for _ in range(2):  # warm up the loaders and the kernels
        trainer.step()
    calls = record_calls(trainer)
    print_breakdown(breakdown(trainer, calls, 5 if args.quick else 15), calls)
    rounds = 10 if args.quick else 40
    times = sample_times(variants(trainer, calls), rounds)
    comparisons = {
        "as configured": ("iteration", "passes"),
        "batches preloaded": ("iteration, batches preloaded", "passes"),
    }
    rows, lines = [], []
    for name, (numerator, denominator) in comparisons.items():
        ratios = [a / b for a, b in zip(times[numerator], times[denominator], strict=True)]
        median, quartiles = statistics.median(ratios), statistics.quantiles(ratios, n=4)
        lines.append([name, f"{min(times[numerator]) * 1e3:.1f}",
                      f"{min(times[denominator]) * 1e3:.1f}", f"{median:.3f}",
                      f"{quartiles[0]:.3f} - {quartiles[2]:.3f}"])  # fmt: skip
        met = median <= TARGET_RATIO
        setting = name if args.width is None else f"{name}, width {args.width}"
        rows.append(Row(f"adaptation step, mini, CPU: {setting}", "iteration / its model passes",
                        f"{median:.3g}x", f"<= {TARGET_RATIO}", met))  # fmt: skip
    print(f"iteration / model passes: {rounds} interleaved rounds, best times and the median and "
          "quartiles of the per-round ratios")  # fmt: skip
    print(tabulate(lines, headers=["setting", "iteration ms", "passes ms", "median", "quartiles"]))
    finish(rows, args.summary)


if __name__ == "__main__":
    main()
