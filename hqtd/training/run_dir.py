"""The run directory of one training run: what it holds decides whether a run starts, resumes or
stops, and one ``hqtd train`` process at a time works in it.

A run directory is resumed (or, finished, left alone) only for the same computation: the same
config (except :data:`RESUMABLE_KEYS`), code, data and initial weights (``provenance.json``,
:func:`hqtd.provenance.run_identity`). Otherwise :func:`existing_run` refuses with one line naming
what differs, or with ``train.on_change=restart`` has what the old run trained deleted.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from hqtd.config import Config, OnChange, from_yaml, to_yaml
from hqtd.errors import HqtdError
from hqtd.io import cannot_write, sweep_temporaries, write_json, write_text
from hqtd.models.checkpoints import load_checkpoint
from hqtd.provenance import differences
from hqtd.runtime import Runtime

#: Settings that may change between a run and its resume: they do not change the results.
RESUMABLE_KEYS = (
    "train.device", "train.num_workers", "train.threads", "train.on_change", "train.diagnostics",
)  # fmt: skip
PROVENANCE_FILE = "provenance.json"
#: Held (flock) by the ``hqtd train`` process at work in a run directory; names it (pid, host).
LOCK_FILE = "train.lock"
#: What a restart deletes: everything a training run writes into its run directory, and the
#: evaluations of the old weights (``logs/`` stays: the workflows' log of the current job).
TRAINING_OUTPUTS = (
    "checkpoints", "tensorboard", "train_log.jsonl", "val_log.jsonl", "done", "eval",
    PROVENANCE_FILE,
)  # fmt: skip


def existing_run(config: Config, identity: dict[str, Any]) -> str:
    """Decide what to do with what ``config.run_dir`` holds, before anything is changed.

    Returns:
        ``new`` (nothing trained there, or a restart), ``resume`` (the same computation, with a
        last checkpoint) or ``finished`` (the same computation, done).

    Raises:
        HqtdError: the run directory holds another computation and ``train.on_change`` is
            ``refuse``.
    """
    run_dir = Path(config.run_dir)
    finished = (run_dir / "done").exists()
    if not finished and not (run_dir / "checkpoints" / "last.pt").exists():
        return "new"
    changed = recorded_changes(config, identity)
    if not changed:
        return "finished" if finished else "resume"
    what = f"{'finished' if finished else 'unfinished'} run of other {', '.join(changed)}"
    if config.train.on_change is OnChange.refuse:
        raise HqtdError(
            f"{run_dir}: holds a {what}; pass train.on_change=restart to train it again from "
            "scratch, or use another run_dir"
        )
    print(f"{run_dir}: held a {what}; training again from scratch (train.on_change=restart)")
    return "new"


def recorded_changes(config: Config, identity: dict[str, Any]) -> list[str]:
    """What differs between the run recorded in ``config.run_dir`` and this one: config keys
    (except :data:`RESUMABLE_KEYS`), ``code``, ``data PATH``, initial-weights content; a run
    recorded before hqtd wrote ``provenance.json`` has unknown code and data."""
    run_dir = Path(config.run_dir)
    saved = run_dir / "config.yaml"
    found = config_differences(from_yaml(saved), config) if saved.exists() else ["config unknown"]
    try:
        record = json.loads((run_dir / PROVENANCE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [*found, f"code and data unknown (no {PROVENANCE_FILE})"]
    except (OSError, ValueError) as error:
        raise HqtdError(f"{run_dir / PROVENANCE_FILE}: unreadable ({error})") from None
    return found + differences(record, identity)


def config_differences(saved: Config, new: Config) -> list[str]:
    """Dotted keys whose values differ between two configs, except :data:`RESUMABLE_KEYS`."""

    def flat(config: Config) -> dict[str, Any]:
        container = OmegaConf.to_container(OmegaConf.structured(config), enum_to_str=True)
        return _flatten(container)

    old, now = flat(saved), flat(new)
    keys = sorted(set(old) | set(now))
    return [k for k in keys if old.get(k) != now.get(k) and k not in RESUMABLE_KEYS]


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def truncate_log(path: Path, iteration: int) -> None:
    """Keep the JSON lines of ``path`` up to ``iteration`` (drops what a killed run logged after
    its last checkpoint, and a partly written last line), so a resumed log equals an uninterrupted
    one."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record["iteration"] <= iteration:
            kept.append(line + "\n")
    write_text(path, "".join(kept))


def prepare_run_dir(
    config: Config, runtime: Runtime, resume: bool, identity: dict[str, Any]
) -> dict[str, Any] | None:
    """Start or resume the run directory: load the last checkpoint (``resume``) or delete what an
    earlier run trained there, then write ``config.yaml`` and ``provenance.json``.

    Returns:
        the last checkpoint, or None for a fresh run.
    """
    run_dir = Path(config.run_dir)
    checkpoint = resume_checkpoint(run_dir) if resume else None
    if runtime.is_main:
        if not resume:
            clear_training_outputs(run_dir)
        sweep_temporaries(run_dir)  # what a killed write left (the lock keeps other writers out)
        sweep_temporaries(run_dir / "checkpoints")
        write_text(run_dir / "config.yaml", to_yaml(config))
        write_json(run_dir / PROVENANCE_FILE, identity)
        start = checkpoint["iteration"] if checkpoint else 0
        truncate_log(run_dir / "train_log.jsonl", start)
        truncate_log(run_dir / "val_log.jsonl", start)
    return checkpoint


def clear_training_outputs(run_dir: Path) -> None:
    """Delete :data:`TRAINING_OUTPUTS` from ``run_dir`` (a fresh run must not inherit them)."""
    for name in TRAINING_OUTPUTS:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def resume_checkpoint(run_dir: Path) -> dict[str, Any]:
    """The checkpoint a run resumes from: ``last.pt`` or, when that one is damaged, ``best.pt``
    (a full training state too, from an earlier or the same iteration: the resume is as exact).

    Raises:
        HqtdError: ``last.pt`` is damaged and no good ``best.pt`` can replace it; the line says
            what to delete to train from scratch.
    """
    folder = run_dir / "checkpoints"
    try:
        return load_checkpoint(folder / "last.pt")
    except HqtdError as damaged:
        try:
            fallback = load_checkpoint(folder / "best.pt")
        except HqtdError:
            raise HqtdError(
                f"{damaged}; no good best.pt to fall back to: delete {folder} and rerun to "
                "train this run from scratch"
            ) from None
        print(f"{damaged}; resuming from {folder / 'best.pt'} (iteration {fallback['iteration']})")
        return fallback


@contextlib.contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """Hold :data:`LOCK_FILE` of ``run_dir`` for the block; a second ``hqtd train`` on the same
    directory stops with one line naming the holder. Under torchrun rank 0 holds it for all.

    The lock is an ``flock``: the kernel releases it when its holder dies, so the file a killed
    run leaves behind is stale by construction and the next run takes it over.

    Raises:
        HqtdError: another process holds the lock, or the directory cannot be written.
    """
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = _locked_handle(run_dir / LOCK_FILE)
    except OSError as error:
        raise cannot_write(run_dir, error) from None
    try:
        yield
    finally:
        (run_dir / LOCK_FILE).unlink(missing_ok=True)  # removed while held: no one waits on it
        handle.close()
        if created:
            with contextlib.suppress(OSError):  # only if nothing was written (a refused start)
                run_dir.rmdir()


def _locked_handle(path: Path) -> Any:
    """Open and flock ``path``, retrying if a finishing holder unlinked it meanwhile (a lock on a
    deleted file would not exclude the next process); write this process's name into it."""
    while True:
        handle = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise HqtdError(
                f"{path.parent}: in use by {holder} (its {LOCK_FILE}); wait for it to finish or "
                "stop it, or use another run_dir"
            ) from None
        if path.exists() and os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
            break
        handle.close()
    handle.seek(0)
    stale = handle.read().strip()
    if stale:
        print(f"{path}: taking over the lock of {stale}, which no longer runs")
    handle.truncate(0)
    handle.write(f"hqtd train pid {os.getpid()} on host {socket.gethostname()}\n")
    handle.flush()
    return handle
