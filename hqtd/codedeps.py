"""Which source files of the hqtd package a command's computation depends on.

Both the DAG (``dvc.yaml`` deps) and a run's code fingerprint need "the hqtd modules this stage
imports": :func:`module_files` finds them statically, by following every ``import hqtd...``
statement (at module level or inside functions) from an entry module, without importing anything.
"""

from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE = PACKAGE_DIR.name


def _source_file(module: str) -> Path | None:
    """``hqtd.a.b`` -> ``hqtd/a/b.py`` or ``hqtd/a/b/__init__.py``; None if neither exists."""
    parts = module.split(".")[1:]
    base = PACKAGE_DIR.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported(module: str, path: Path) -> set[str]:
    """The hqtd modules that ``path`` (the source of ``module``) names in import statements,
    including each package whose ``__init__`` runs on the way (``hqtd.a`` for ``hqtd.a.b``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against this module's package
                package = module.split(".")
                package = package[: len(package) - node.level + (path.name == "__init__.py")]
                base = ".".join(package + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            # `from hqtd.x import y` may import the submodule hqtd.x.y
            names |= {f"{base}.{alias.name}" for alias in node.names}
    found = set()
    for name in names:
        if name == PACKAGE or name.startswith(PACKAGE + "."):
            parts = name.split(".")
            found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return {name for name in found if _source_file(name) is not None}


@cache
def module_files(entry: str) -> tuple[Path, ...]:
    """Every source file of the hqtd modules that ``entry`` (e.g. ``hqtd.train``) imports,
    directly or transitively, itself included; sorted paths relative to the repository root.

    Raises:
        ValueError: ``entry`` is not a module of the hqtd package.
    """
    if _source_file(entry) is None:
        raise ValueError(f"{entry}: not a module of the {PACKAGE} package")
    seen, todo = set(), [entry]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(_imported(module, _source_file(module)) - seen)
    root = PACKAGE_DIR.parent
    return tuple(sorted(_source_file(m).relative_to(root) for m in seen))


def code_fingerprint(entry: str) -> str:
    """SHA-256 over the paths and contents of :func:`module_files` of ``entry``: equal exactly
    when no file that the entry's computation imports has changed."""
    digest = hashlib.sha256()
    root = PACKAGE_DIR.parent
    for relative in module_files(entry):
        digest.update(relative.as_posix().encode() + b"\0")
        digest.update((root / relative).read_bytes() + b"\0")
    return digest.hexdigest()
