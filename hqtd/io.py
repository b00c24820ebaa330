"""Atomic file output: every artefact is written to a temporary sibling and renamed into place.

A crash or kill therefore leaves either the previous complete file or none, never a partial one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hqtd.errors import HqtdError

TEMPORARY_SUFFIX = ".tmp"


def plain_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0666 less the process umask."""
    umask = os.umask(0)  # reading the umask means setting it; restored right away
    os.umask(umask)
    return 0o666 & ~umask


def cannot_write(path: Path, error: OSError) -> HqtdError:
    """The one-line error for a folder that cannot be created or written: read-only, or a file
    where a folder should be (``mkdir`` says only "File exists" then)."""
    if isinstance(error, FileExistsError) and error.filename:
        why = f"a file is in the way: {error.filename}"
    else:
        why = error.strerror
    return HqtdError(f"{path}: cannot write here ({why})")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is fsynced, given the mode a plain
    write would give it (mkstemp's is 0600) and renamed to ``path``.

    Raises:
        HqtdError: the folder cannot be written (read-only, or a file in the way).
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=TEMPORARY_SUFFIX, dir=target.parent
        )
    except OSError as error:
        raise cannot_write(target, error) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, plain_file_mode())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def sweep_temporaries(folder: str | os.PathLike) -> int:
    """Delete the temporary files that a killed :func:`atomic_path` writer left in ``folder``
    (not below it). Call it only where no other writer can be at work (under a lock, or at the
    start of a command that owns the folder).

    Returns:
        how many files were deleted.
    """
    leftovers = list(Path(folder).glob(f".*{TEMPORARY_SUFFIX}"))
    for leftover in leftovers:
        leftover.unlink(missing_ok=True)
    return len(leftovers)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Atomically write ``data`` as indented, key-sorted JSON (byte-stable for equal data)."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    """Atomically write raw bytes to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in chunks (checkpoints and images can be large)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
