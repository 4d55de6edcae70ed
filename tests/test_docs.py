"""Docs cannot rot: every command shown in README.md and docs/*.md is checked against the code.

Collected: every ```bash and ```console block (in a console block, only the lines that start with
``$ ``; a line ending in a backslash continues on the next). Each shell line is split into
commands at ``;``, ``&&``, ``||``, ``|``, ``&`` and parentheses, and for every command:

1. ``cora ...`` (also ``python -m cora ...`` and ``accelerate launch ... -m cora ...``): the
   sub-command and every option exist in the typer app (walked as click sees it), and the whole
   line parses with click (types, arity, required options); a failure names the file and line;
2. every path it names inside this repository (``experiments/``, ``scripts/``, ``benchmarks/``,
   ``docs/``, ``tests/``, ``src/``) exists, experiment files load with ``Experiment.load``, the
   options of ``python SCRIPT.py --opt`` are options the script declares, and ``make TARGET``
   targets exist in the Makefile;
3. a block right after a ``<!-- docs-test: run ... -->`` line is run, command by command, in a
   temporary folder on tiny fixtures (tests/llm_fixtures.py), each command expected to exit 0.
   Marker arguments: ``dataset=PATH`` puts the tiny dataset at PATH; ``interactions=RATINGS,ITEMS``
   writes a small ML-1M-style ratings CSV and items CSV at those paths. Substitutions keep it
   fast: ``--backbone X`` becomes the tiny random Llama folder (and is added to ``cora train``
   lines without one), ``--max-steps N`` 2, ``--eval-every N`` 1, ``--warmup-steps N`` 1.

Also checked: relative links between the pages (the file, and the heading an anchor names), that
every command of the app is shown somewhere, and that the README stays a front page that starts
with the project's two set-up commands.
"""

from __future__ import annotations

import re
import shlex
import shutil
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"bash", "console", "sh", "shell"}
FENCE = re.compile(r"^(?P<indent>\s*)```\s*(?P<lang>[\w-]*)\s*$")
MARK = re.compile(r"^\s*<!--\s*docs-test:\s*run\b(?P<args>.*?)-->\s*$")
REPO_PATH = re.compile(r"^(?:\./)?(?P<path>(?:experiments|scripts|benchmarks|docs|tests|src)/[\w./-]+?)(?:::\S+)?$")
NUMBER = re.compile(r"^-\d")
SMALL = {"--max-steps": "2", "--eval-every": "1", "--warmup-steps": "1"}
README_MAX_LINES = 150


@dataclass
class Block:
    page: Path
    lang: str
    line: int  # of the opening fence
    lines: list[tuple[int, str]]
    run: dict[str, str] | None  # the docs-test marker's arguments, None when not runnable

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def read_blocks(page: Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, marker, i = [], None, 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m is None:
            if lines[i].strip():
                mark = MARK.match(lines[i])
                if marker is not None:
                    pytest.fail(f"{page.relative_to(ROOT)}:{marker[0]}: a docs-test marker must be right before a "
                                "```bash block")
                marker = (i + 1, mark.group("args")) if mark else None
            i += 1
            continue
        indent, body, j = m.group("indent"), [], i + 1
        while j < len(lines) and not re.match(r"^\s*```\s*$", lines[j]):
            body.append((j + 1, lines[j][len(indent):] if lines[j].startswith(indent) else lines[j].lstrip()))
            j += 1
        run = None
        if marker is not None:
            if m.group("lang") not in SHELL:
                pytest.fail(f"{page.relative_to(ROOT)}:{marker[0]}: a docs-test marker must be right before a "
                            f"```bash block, not ```{m.group('lang')}")
            run = dict(kv.split("=", 1) for kv in marker[1].split())
        blocks.append(Block(page, m.group("lang"), i + 1, body, run))
        marker, i = None, j + 1
    return blocks


def shell_lines(block: Block) -> list[tuple[int, str]]:
    """(line number, one logical shell line) of a block: continuations joined, comments and (in a
    console block) output lines dropped."""
    out, buf, start = [], "", 0
    for no, text in block.lines:
        if not buf:
            if block.lang == "console":
                if not text.startswith("$ "):
                    continue
                text = text[2:]
            start = no
        if text.rstrip().endswith("\\"):
            buf += text.rstrip()[:-1] + " "
            continue
        buf += text
        if buf.strip() and not buf.strip().startswith("#"):
            out.append((start, buf.strip()))
        buf = ""
    return out


def commands(line: str) -> list[list[str]]:
    """The words of each command on a shell line, leading VAR=value assignments dropped."""
    lex = shlex.shlex(line, posix=True, punctuation_chars=";&|()")
    lex.whitespace_split, lex.commenters = True, "#"
    out, cur = [], []
    for word in lex:
        if word and set(word) <= set(";&|()"):
            out.append(cur)
            cur = []
        else:
            cur.append(word)
    out.append(cur)
    cleaned = []
    for words in out:
        while words and re.match(r"^[A-Za-z_]\w*=", words[0]):
            words = words[1:]
        if words:
            cleaned.append(words)
    return cleaned


def cora_args(words: list[str]) -> list[str] | None:
    """The arguments of a `cora` command (`cora X`, `python -m cora X`, `accelerate launch -m cora X`)."""
    if words[0] == "cora":
        return words[1:]
    for k in range(len(words) - 1):
        if words[k] == "-m" and words[k + 1] in ("cora", "cora.cli"):
            return words[k + 2:]
    return None


def all_blocks() -> list[Block]:
    return [b for page in PAGES for b in read_blocks(page)]


def shell_blocks() -> list[Block]:
    return [b for b in all_blocks() if b.lang in SHELL]


def _root_command():
    import cora.cli

    return typer.main.get_command(cora.cli.app)


def _option_names(cmd) -> set[str]:
    return {o for p in cmd.params for o in (*p.opts, *getattr(p, "secondary_opts", ())) if o.startswith("-")}


def check_cora(args: list[str], where: str) -> list[str]:
    """Fail unless ``cora ARGS`` names a command of the app, with options it has, and parses.
    Returns the command path, e.g. ['data', 'import-interactions']."""
    cmd, path, rest = _root_command(), [], list(args)
    while hasattr(cmd, "commands"):
        while rest and rest[0].startswith("-"):
            name = rest.pop(0).split("=", 1)[0]
            if name == "--help":
                return path
            if name not in _option_names(cmd):
                pytest.fail(f"{where}: 'cora {' '.join(path)}' has no option {name} "
                            f"(it has: {', '.join(sorted(_option_names(cmd)))})")
        if not rest:
            return path
        sub = rest.pop(0)
        if sub not in cmd.commands:
            pytest.fail(f"{where}: no command 'cora {' '.join([*path, sub])}' "
                        f"(commands: {', '.join(sorted(cmd.commands))})")
        cmd, path = cmd.commands[sub], [*path, sub]
    for word in rest:
        if word == "--":
            break
        if word.startswith("-") and len(word) > 1 and not NUMBER.match(word):
            name = word.split("=", 1)[0]
            if name == "--help":
                return path
            if name not in _option_names(cmd):
                pytest.fail(f"{where}: 'cora {' '.join(path)}' has no option {name} "
                            f"(options: {', '.join(sorted(_option_names(cmd)))})")
    try:
        cmd.make_context(f"cora {' '.join(path)}", list(rest))
    except Exception as e:  # click's UsageError / BadParameter (typer vendors its own click)
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        pytest.fail(f"{where}: 'cora {' '.join(path)}' does not parse: {message}")
    return path


def check_files(words: list[str], where: str) -> None:
    """Paths of this repository a command names exist; experiment files load; script options exist."""
    from cora.experiment.spec import Experiment

    for word in words:
        m = REPO_PATH.match(word)
        if m is None:
            continue
        path = ROOT / m.group("path")
        if not path.exists():
            pytest.fail(f"{where}: {m.group('path')} does not exist in the repository")
        if m.group("path").startswith("experiments/") and path.suffix == ".yaml":
            Experiment.load(path)  # raises a CoraError naming the file and field
    if len(words) > 1 and Path(words[0]).name.startswith("python") and words[1].endswith(".py"):
        script = (ROOT / words[1]).read_text(encoding="utf-8")
        for word in words[2:]:
            name = word.split("=", 1)[0]
            if name.startswith("--") and f'"{name}"' not in script:
                pytest.fail(f"{where}: {words[1]} has no option {name}")
    if words[0] == "make":
        makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
        for target in (w for w in words[1:] if "=" not in w and not w.startswith("-")):
            if not re.search(rf"^{re.escape(target)}:", makefile, flags=re.M):
                pytest.fail(f"{where}: the Makefile has no target '{target}'")


# ----------------------------------------------------------------------------- every command
@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_shown_exists_with_its_options_and_files(page):
    for block in (b for b in read_blocks(page) if b.lang in SHELL):
        for no, line in shell_lines(block):
            where = f"{page.relative_to(ROOT)}:{no}"
            for words in commands(line):
                args = cora_args(words)
                if args is not None:
                    check_cora(args, where)
                check_files(words, where)


def test_every_command_of_the_app_is_shown_somewhere():
    shown = set()
    for block in shell_blocks():
        for no, line in shell_lines(block):
            for words in commands(line):
                if (args := cora_args(words)) is not None:
                    shown.add(" ".join(check_cora(args, f"{block.page.relative_to(ROOT)}:{no}")))

    def leaves(cmd, path):
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                yield from leaves(sub, [*path, name])
        else:
            yield " ".join(path)

    missing = sorted(set(leaves(_root_command(), [])) - shown)
    assert not missing, f"commands no page shows in a ```bash block: {', '.join('cora ' + m for m in missing)}"


def test_the_checker_catches_what_it_should():
    """The checks above fail on an unknown option, a missing command, a bad value, a missing file."""
    for args in (["train", "--no-such-flag", "1", "--out", "x"], ["nope"], ["evaluate", "run", "--limit", "many"],
                 ["train", "--data", "d"]):  # the last: --out is required
        with pytest.raises(pytest.fail.Exception):
            check_cora(args, "here")
    with pytest.raises(pytest.fail.Exception, match="does not exist"):
        check_files(["cora", "experiment", "experiments/no-such.yaml"], "here")
    with pytest.raises(pytest.fail.Exception, match="has no option"):
        check_files(["python", "scripts/generator_sensitivity.py", "--no-such"], "here")
    assert commands("A=1 cora x --y 2 && (cora z; ls) &") == [["cora", "x", "--y", "2"], ["cora", "z"], ["ls"]]
    assert cora_args("accelerate launch --multi_gpu -m cora train --device cpu".split()) == [
        "train", "--device", "cpu"]
    check_cora(["--debug", "data", "info", "runs/ml1m"], "here")


# ----------------------------------------------------------------------------- links, front page
LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, flags=re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files_and_headings_that_exist(page):
    text = re.sub(r"^\s*```.*?^\s*```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    for m in LINK.finditer(text):
        target = m.group("target")
        if re.match(r"^[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        assert path.exists(), f"{page.relative_to(ROOT)}: link to {target}: no such file"
        if anchor and path.suffix == ".md":
            assert anchor in _anchors(path), f"{page.relative_to(ROOT)}: link to {target}: no such heading"


def test_the_readme_is_a_front_page_that_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines: move detail into docs/"
    first = read_blocks(ROOT / "README.md")[0]
    assert [ln for ln in lines[:first.line - 1] if ln.strip()] == ["# cora"]  # the title, then the block
    assert first.lang == "bash" and [commands(line)[0] for _, line in shell_lines(first)] == [
        ["make", "demo"], ["make", "test"]]
    for page in ("method.md", "cli.md", "own-data.md", "experiments.md", "serving.md", "extending.md"):
        assert f"(docs/{page})" in text, f"the README does not point at docs/{page}"


# ----------------------------------------------------------------------------- runnable blocks
def runnable_blocks() -> list[Block]:
    return [b for b in shell_blocks() if b.run is not None]


def test_the_examples_that_must_run_are_marked():
    marked = {b.page.name: b for b in runnable_blocks()}
    assert "own-data.md" in marked, "docs/own-data.md's example must be marked <!-- docs-test: run ... -->"
    sequences = [[words[1] for _, line in shell_lines(b) for words in commands(line)] for b in runnable_blocks()]
    assert any({"train", "evaluate", "report"} <= set(s) for s in sequences), "no runnable train -> evaluate -> report"


def write_interactions(ratings: Path, items: Path) -> None:
    """A small ML-1M-style log: 40 users x ~15 rated movies, distinct times, titles with years."""
    rng = np.random.default_rng(0)
    rows = [(u, int(rng.integers(1, 61)), int(rng.integers(1, 6)), 978_300_000 + 1_000 * u + 37 * k)
            for u in range(1, 41) for k in range(15)]
    events = pd.DataFrame(rows, columns=["userId", "movieId", "rating", "timestamp"])
    events = events.drop_duplicates(["userId", "movieId"]).sort_values("timestamp")
    words = "Star War Love Story Lost City King Night Day World".split()
    titles = [f"{words[i % 10]} {words[i * 3 % 10]} ({1950 + i})" for i in range(1, 61)]
    for path in (ratings, items):
        path.parent.mkdir(parents=True, exist_ok=True)
    events.to_csv(ratings, index=False)
    pd.DataFrame({"movieId": range(1, 61), "title": titles, "genres": "Drama"}).to_csv(items, index=False)


def substitute(argv: list[str], backbone: Path) -> list[str]:
    out = list(argv)
    for k, word in enumerate(out[:-1]):
        if word in SMALL:
            out[k + 1] = SMALL[word]
        elif word == "--backbone":
            out[k + 1] = str(backbone)
    if out[:1] == ["train"] and "--backbone" not in out and "--config" not in out:
        out += ["--backbone", str(backbone)]
    return out


@pytest.mark.parametrize("block", runnable_blocks(), ids=lambda b: b.where)
def test_runnable_block_runs_on_tiny_fixtures(block, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cora.cli import app
    from llm_fixtures import tiny_backbone_folder, tiny_dataset

    fixtures, work = tmp_path / "fixtures", tmp_path / "work"
    work.mkdir()
    unknown = set(block.run) - {"dataset", "interactions"}
    assert not unknown, f"{block.where}: unknown docs-test argument(s) {', '.join(sorted(unknown))}"
    if "dataset" in block.run:
        shutil.copytree(tiny_dataset(fixtures), work / block.run["dataset"])
    if "interactions" in block.run:
        ratings, items = block.run["interactions"].split(",")
        write_interactions(work / ratings, work / items)
    backbone = tiny_backbone_folder(fixtures)
    monkeypatch.chdir(work)
    for no, line in shell_lines(block):
        cmds = commands(line)
        where = f"{block.page.relative_to(ROOT)}:{no}"
        assert len(cmds) == 1 and cmds[0][0] == "cora", f"{where}: a runnable block holds one plain cora command a line"
        argv = substitute(cmds[0][1:], backbone)
        result = CliRunner().invoke(app, argv)
        if result.exit_code != 0:
            trace = "".join(traceback.format_exception(result.exception)) if result.exception else ""
            pytest.fail(f"{where}: cora {' '.join(argv)} exited {result.exit_code}\n{result.output[-3000:]}\n{trace}")
