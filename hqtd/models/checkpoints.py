"""Loading weights into :class:`~hqtd.models.deeplabv2.DeepLabV2` from every supported file kind.

Supported (METHOD.md §2):

- hqtd training checkpoints (``{"format": "hqtd-train-v1", "model": ..., "ema": ...}``), written
  and read back whole by :func:`save_checkpoint` and :func:`load_checkpoint`;
- the authors' checkpoints: keys ``conv1, bn1, layer1..layer4`` (torchvision names), ``layer5``
  (aux ASPP) and ``layer6`` (main ASPP) with branches ``conv2d_list.{0..3}``, possibly wrapped in
  ``state_dict`` or ``shadow`` and prefixed ``module.``;
- the authors' caffe-converted ImageNet init (keys prefixed ``Scale.``): backbone only;
- torchvision ImageNet ResNet state dicts (``fc.*`` dropped): backbone only.

Which weights (METHOD.md §8.2): an hqtd file holds the student (``model``) and its EMA (``ema``),
an authors' file (their save format ``{'state_dict': student, 'shadow': EMA, 'iter', 'epoch',
'optimizer', 'best_MIou'}``) the same pair as ``state_dict`` and ``shadow``. ``Weights.auto`` takes
the EMA, except that training started from an authors' file takes its ``state_dict``, as their code
does; where the preferred entry is absent, ``auto`` takes the one the file has. An explicit
``ema``/``student`` request is strict: a file without that entry is an error listing what it
holds. A bare state dict has no such entries: it serves ``auto`` only, since nothing says whether
it is a student or an EMA.

A load is all or nothing: a key the model lacks or a model key the file lacks is an error that lists
them. The only keys dropped are the three unused authors' parameters, the ``fc`` classifier of an
ImageNet file, the heads of an init file, and the ASPP branches beyond the model's
``aspp_branches`` (the authors' files always store four; a 4-branch hqtd checkpoint initialises a
2-branch ``official`` run the same way).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hqtd.config import Weights
from hqtd.data.labels import TRAINIDS_16
from hqtd.errors import HqtdError
from hqtd.io import atomic_path

#: The ``format`` entry of every hqtd training checkpoint.
HQTD_FORMAT = "hqtd-train-v1"
#: The entries holding the student and the EMA weights: hqtd's files, the authors' (§8.2).
HQTD_ENTRIES = {Weights.student: "model", Weights.ema: "ema"}
AUTHORS_ENTRIES = {Weights.student: "state_dict", Weights.ema: "shadow"}
#: Parameters of the authors' adaptation model that its forward pass never uses.
AUTHORS_UNUSED = frozenset({"proto_classifier.weight", "para", "fuse_weight_1"})
#: Authors' key prefix -> hqtd key prefix; the first match wins, in both directions.
_LAYOUT = (
    ("layer5.conv2d_list.", "head_aux.branches."),
    ("layer6.conv2d_list.", "head_main.branches."),
    ("", "backbone."),
)
_HEAD_PREFIXES = ("head_aux.", "head_main.")
_BRANCH_INDEX = re.compile(r"^head_(?:aux|main)\.branches\.(\d+)\.")
_MAX_LISTED = 12


def _rename(state_dict: Mapping[str, Tensor], to_hqtd: bool) -> dict[str, Tensor]:
    """Map keys between the authors' layout and hqtd's (the one place the two are related)."""
    pairs = _LAYOUT if to_hqtd else tuple((new, old) for old, new in _LAYOUT)
    renamed = {}
    for key, value in state_dict.items():
        old, new = next((o, n) for o, n in pairs if key.startswith(o))
        renamed[new + key[len(old) :]] = value
    return renamed


def from_authors_layout(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Authors' keys (``conv1...``, ``layer5/6.conv2d_list.k``) -> hqtd keys."""
    return _rename(state_dict, to_hqtd=True)


def to_authors_layout(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """hqtd keys -> the authors' layout, e.g. to run hqtd weights in the authors' code.

    A 2-branch model exports only ``conv2d_list.0`` and ``.1``.
    """
    return _rename(state_dict, to_hqtd=False)


def _read(path: Path) -> object:
    """``torch.load`` with ``weights_only=True`` (no arbitrary code from a checkpoint)."""
    if not path.is_file():
        raise HqtdError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a corrupt or foreign file can fail anywhere in the unpickler
        kind = type(error).__name__
        raise HqtdError(
            f"{path}: not readable as a weights-only torch checkpoint ({kind})"
        ) from None


def state_checksum(state: Any) -> str:
    """SHA-256 over a checkpoint's whole content: every tensor's dtype, shape and bytes and every
    other value's repr, walked in the (saved, hence stable) order of its dicts and sequences.

    An hqtd checkpoint stores it under ``checksum``: a file whose bytes were damaged inside a
    tensor still unpickles, and only this tells it from a good one.
    """
    digest = hashlib.sha256()
    _feed(digest, state)
    return digest.hexdigest()


def _feed(digest: Any, node: Any) -> None:
    if isinstance(node, Tensor):
        digest.update(f"tensor {node.dtype} {tuple(node.shape)}:".encode())
        flat = node.detach().cpu().contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    elif isinstance(node, Mapping):
        digest.update(b"{")
        for key, value in node.items():
            digest.update(f"{key!r}:".encode())
            _feed(digest, value)
        digest.update(b"}")
    elif isinstance(node, list | tuple):
        digest.update(b"[")
        for value in node:
            _feed(digest, value)
        digest.update(b"]")
    else:
        digest.update(f"{node!r},".encode())


def verify_checksum(checkpoint: Mapping, path: Path) -> None:
    """Compare an hqtd checkpoint's stored ``checksum`` with its content (files written before
    hqtd stored one have none and are accepted).

    Raises:
        HqtdError: the content differs from what was saved.
    """
    stored = checkpoint.get("checksum")
    if stored is None:
        return
    content = {key: value for key, value in checkpoint.items() if key != "checksum"}
    if state_checksum(content) != stored:
        raise HqtdError(f"{path}: damaged checkpoint (its content does not match its checksum)")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically write an hqtd training checkpoint: ``state`` under :data:`HQTD_FORMAT` (a kill
    leaves the previous file intact).

    Saved through an open file: given a path, torch.save names the zip archive inside after the
    (random) temporary file, so equal checkpoints would differ in their bytes. The file also
    stores the content's ``checksum`` (:func:`state_checksum`), which :func:`load_checkpoint`
    verifies; the tensors themselves are saved unchanged.
    """
    content = {"format": HQTD_FORMAT, **state}
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save({**content, "checksum": state_checksum(content)}, handle)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a whole checkpoint written by :func:`save_checkpoint` and verify its checksum.

    Raises:
        HqtdError: an unreadable, foreign or damaged file (empty, text, bytes flipped).
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a damaged file can fail anywhere in the unzipper or unpickler
        detail = (str(error).splitlines() or [type(error).__name__])[0]
        raise HqtdError(f"{path}: unreadable checkpoint ({detail})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != HQTD_FORMAT:
        raise HqtdError(f"{path}: not an hqtd training checkpoint (format {HQTD_FORMAT})")
    verify_checksum(checkpoint, path)
    return checkpoint


def checkpoint_iteration(path: Path) -> int | None:
    """The training iteration stored in an hqtd checkpoint; None for other checkpoint files."""
    try:  # memory-mapped: reads the small entries without loading the weights
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError):
        return None  # e.g. the authors' legacy-format files; load_weights has already read them
    if isinstance(checkpoint, dict) and checkpoint.get("format") == HQTD_FORMAT:
        return int(checkpoint["iteration"])
    return None


@dataclass(frozen=True)
class CheckpointWeights:
    """One set of weights read from a checkpoint file, not yet fitted to a model."""

    path: Path
    state: dict[str, Tensor]  # DataParallel's ``module.`` prefix removed
    native: bool  # already in hqtd's key layout
    entry: str | None  # the file's entry they come from; None for a bare state dict
    authors_format: bool  # the file is in the authors' save format (``state_dict``/``shadow``)


def choose_entry(
    checkpoint: Mapping, path: Path, weights: Weights, for_training: bool
) -> str | None:
    """The entry of a loaded checkpoint that holds the requested weights (module docstring).

    Args:
        checkpoint: the loaded file; an hqtd file has ``format``.
        path: the file, for messages.
        weights: which weights are asked for.
        for_training: ``auto`` starts adaptation: an authors' file's student (``state_dict``).

    Returns:
        The entry name, None for a bare state dict (which only ``auto`` may use).

    Raises:
        HqtdError: an explicit request the file cannot serve, naming what it holds.
    """
    hqtd = "format" in checkpoint
    names = HQTD_ENTRIES if hqtd else AUTHORS_ENTRIES
    present = [name for name in names.values() if checkpoint.get(name) is not None]
    if not hqtd and not present:
        if weights is Weights.auto:
            return None
        raise HqtdError(
            f"{path}: a bare state dict, without separate student and EMA weights; "
            f"only 'auto' can use it, not {weights.value!r}"
        )
    wanted = weights
    if weights is Weights.auto:
        wanted = Weights.student if for_training and not hqtd else Weights.ema
        if names[wanted] not in present and present:
            return present[0]  # the only weights the file has, as the authors' loader falls back
    if names[wanted] not in present:
        holds = ", ".join(present) or "neither"
        raise HqtdError(
            f"{path}: no {wanted.value} weights ({names[wanted]!r}) in this file; it holds: {holds}"
        )
    return names[wanted]


def read_weights(
    path: str | Path, weights: Weights = Weights.auto, *, for_training: bool = False
) -> CheckpointWeights:
    """Read the requested weights of a checkpoint of any supported kind (module docstring).

    Raises:
        HqtdError: a missing, unreadable or foreign file, or an entry it does not hold.
    """
    path = Path(path)
    obj = _read(path)
    hqtd = isinstance(obj, Mapping) and "format" in obj
    if hqtd and obj["format"] != HQTD_FORMAT:
        raise HqtdError(f"{path}: unsupported checkpoint format {obj['format']!r}")
    if hqtd:
        verify_checksum(obj, path)
    entry = choose_entry(obj, path, weights, for_training) if isinstance(obj, Mapping) else None
    if entry is not None:
        obj = obj[entry]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise HqtdError(f"{path}: expected a state dict of tensors")
    state = dict(obj)
    if state and all(key.startswith("module.") for key in state):  # saved from DataParallel/DDP
        state = {key.removeprefix("module."): value for key, value in state.items()}
    native = hqtd or any(key.startswith("backbone.") for key in state)
    authors_format = not hqtd and entry is not None
    return CheckpointWeights(path, state, native, entry, authors_format)


def _to_hqtd(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], bool]:
    """An authors'/ImageNet state dict in hqtd's layout, and whether it carries heads.

    ImageNet files (torchvision: ``fc.*``; authors' init: ``Scale.*``) give the backbone only.
    """
    state = {k: v for k, v in state.items() if k not in AUTHORS_UNUSED}
    imagenet = any(k.startswith("fc.") for k in state) or all(k.startswith("Scale.") for k in state)
    state = {k.removeprefix("Scale."): v for k, v in state.items() if not k.startswith("fc.")}
    state = from_authors_layout(state)
    if imagenet:
        return {k: v for k, v in state.items() if not k.startswith(_HEAD_PREFIXES)}, False
    return state, True


def _branch(key: str) -> int:
    """ASPP branch index of a head key, -1 for any other key."""
    match = _BRANCH_INDEX.match(key)
    return int(match.group(1)) if match else -1


def _select_rows(state: dict[str, Tensor], model_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Head tensors of a 19-class file for a 16-class model keep the rows ``TRAINIDS_16``."""
    rows = list(TRAINIDS_16)
    selected = dict(state)
    for key, value in state.items():
        target = model_state.get(key)
        is_head = key.startswith(_HEAD_PREFIXES)
        if is_head and target is not None and value.shape[0] == 19 and target.shape[0] == 16:
            selected[key] = value[rows]
    return selected


def _listed(keys: set[str]) -> str:
    """Sorted keys on one line, cut after ``_MAX_LISTED`` with a count of the rest."""
    names = sorted(keys)
    more = f" (and {len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else ""
    return ", ".join(names[:_MAX_LISTED]) + more


def _check(
    state: Mapping[str, Tensor], model_state: Mapping[str, Tensor], with_heads: bool, path: Path
) -> None:
    """Fail unless ``state`` fits the model exactly (heads may be absent iff not ``with_heads``).

    ``num_batches_tracked`` counters may be absent: the caffe-converted files predate them and
    the model keeps its own (they matter only for BN with ``momentum=None``).
    """
    optional = {k for k in model_state if k.endswith("num_batches_tracked")}
    if not with_heads:
        optional |= {k for k in model_state if k.startswith(_HEAD_PREFIXES)}
    unexpected = set(state) - set(model_state)
    missing = set(model_state) - set(state) - optional
    if unexpected or missing:
        parts = [f"unexpected keys: {_listed(unexpected)}"] if unexpected else []
        parts += [f"missing keys: {_listed(missing)}"] if missing else []
        raise HqtdError(f"{path}: weights do not fit the model; " + "; ".join(parts))
    wrong = {
        f"{k} {tuple(v.shape)} vs {tuple(model_state[k].shape)}"
        for k, v in state.items()
        if v.shape != model_state[k].shape
    }
    if wrong:
        raise HqtdError(f"{path}: shape mismatch (file vs model): {_listed(wrong)}")


def load_weights(
    model: nn.Module,
    path: str | Path,
    *,
    strict_heads: bool = True,
    weights: Weights = Weights.auto,
    for_training: bool = False,
) -> str | None:
    """Load a checkpoint of any supported kind (module docstring) into ``model`` in place.

    Args:
        model: a :class:`~hqtd.models.deeplabv2.DeepLabV2`.
        path: the file.
        strict_heads: if False, head weights in the file are ignored and the model's heads kept
            (backbone-only initialisation from any file).
        weights: the student or EMA weights of the file (see :func:`choose_entry`).
        for_training: the weights start a training run (``auto``: an authors' ``state_dict``).

    Returns:
        The file's entry the weights came from, None for a bare state dict.

    Raises:
        HqtdError: a missing or unreadable file, an entry the file lacks, or weights that do not
            fit: the message lists the unexpected, missing or mis-shaped keys.
    """
    loaded = read_weights(path, weights, for_training=for_training)
    apply_weights(model, loaded, strict_heads=strict_heads)
    return loaded.entry


def apply_weights(
    model: nn.Module, loaded: CheckpointWeights, *, strict_heads: bool = True
) -> None:
    """Fit weights from :func:`read_weights` to ``model`` and load them (:func:`load_weights`)."""
    state, with_heads = loaded.state, True
    if not loaded.native:
        state, with_heads = _to_hqtd(state)
    # A 2-branch model (the authors' ASPP, which sums only the first two) takes the first two of
    # a file's four branches: the authors' files always store four, and hqtd's `official` runs
    # start from a 4-branch source-only checkpoint just as the authors' code would load it.
    aspp_branches = len(model.head_main.branches)
    state = {k: v for k, v in state.items() if _branch(k) < aspp_branches}
    if not strict_heads:
        state = {k: v for k, v in state.items() if not k.startswith(_HEAD_PREFIXES)}
        with_heads = False
    model_state = model.state_dict()
    state = _select_rows(state, model_state)
    _check(state, model_state, with_heads, loaded.path)
    model.load_state_dict(state, strict=False)
