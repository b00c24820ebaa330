"""Every command in the README's code blocks runs, or says why it cannot here (issue 17).

A command line of a ``bash`` block either carries a marker in its comment, ``[gpu]``, ``[data]``
(the real datasets or weights), ``[long]`` (minutes to hours: a whole workflow), ``[dvc]`` (a DVC
repository with results) or ``[clone]`` (the repository's history and files: run here in the
checkout), and is then checked to be well formed (``hqtd`` commands parse, ``make`` targets
exist), or it is an ``hqtd`` command that this test runs, in README order, in a scratch folder,
with tiny overrides (a small mini benchmark, a small network, 2 iterations).
"""

from __future__ import annotations

import functools
import re
import shlex
from pathlib import Path

import pytest

from hqtd.cli import build_parser, main
from hqtd.data.synth import write

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MARKERS = ("[gpu]", "[data]", "[long]", "[dvc]", "[clone]")
TOOLS = ("hqtd", "make", "snakemake", "dvc")
SMALL = write.Counts(gta5=4, synthia=2, cityscapes_train=4, cityscapes_val=2)
TINY = [
    "model.mini_width=8", "benchmark.source_size=[48,27]", "benchmark.target_size=[48,24]",
    "benchmark.crop_size=16", "train.iterations=2", "train.source_only_iterations=2",
    "train.eval_every=2", "train.checkpoint_every=2", "train.batch_size=1", "train.num_workers=0",
]  # fmt: skip


def readme_commands() -> list[tuple[list[str], str]]:
    """(words, comment) of every command line of the README's bash blocks (continuations
    joined)."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.DOTALL)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            code, _, comment = line.partition("#")
            if code.strip():
                commands.append((shlex.split(code), comment))
    return commands


def test_every_command_is_run_here_or_marked():
    commands = readme_commands()
    assert len(commands) > 15
    for words, comment in commands:
        assert words[0] in TOOLS, words
        marked = [m for m in MARKERS if m in comment]
        if words[0] == "hqtd":
            build_parser().parse_args(words[1:])  # well formed (exits on a bad command)
        elif words[0] == "make":
            makefile = (ROOT / "Makefile").read_text()
            assert all(re.search(rf"^{t}:", makefile, re.MULTILINE) for t in words[1:])
        if not marked:
            assert words[0] == "hqtd", f"unmarked command this test cannot run: {words}"


def with_tiny_settings(words: list[str]) -> list[str]:
    """A README command with the tiny overrides (tables: the runs were trained with them)."""
    if words[1] == "train" and "--cfg" not in words:
        return words[1:] + TINY
    if words[1] in ("tables", "figures"):
        return words[1:] + ["--overrides", " ".join(TINY)]
    return words[1:]


def test_the_hand_run_sequence_works_in_a_fresh_scratch_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    small = functools.partial(write.generate, counts=SMALL, workers=1)
    monkeypatch.setattr(write, "generate", small)
    runnable = [w for w, comment in readme_commands() if not any(m in comment for m in MARKERS)]
    assert [w[1] for w in runnable[:3]] == ["synth", "prepare", "prepare"]
    for words in runnable:
        assert main(with_tiny_settings(words)) == 0, (words, capsys.readouterr().err)
    summary = tmp_path / "scratch" / "tables" / "summary.md"
    assert "source_only" in summary.read_text() and "full" in summary.read_text()
    assert "left out" not in capsys.readouterr().err  # exactly the hand-run's runs


def test_clone_commands_run_in_the_checkout(monkeypatch):
    monkeypatch.chdir(ROOT)
    clone = [w for w, comment in readme_commands() if "[clone]" in comment]
    assert clone
    for words in clone:
        assert main(words[1:]) == 0, words


@pytest.mark.parametrize("path", ["README.md", "docs/method.md"])
def test_no_link_leaves_the_repository(path):
    assert "../shared" not in (ROOT / path).read_text()
