"""The documentation shows what the product does: its commands run, its files exist.

Every `distill ...` line in a ```sh, ```bash or ```console block of README.md, docs/*.md and
recipes/README.md is collected. Those that answer offline in seconds (validate, ls, licence,
lineage) are run through the CLI from the repository root and must exit as the doc says: 0,
or the code a trailing `# exits N` comment gives (a refusal is `# exits 2`). The rest (run,
submit, status, logs, stop, card, report: they need a model, a cluster or a finished run) are
only collected. A line is skipped by rule when it holds a placeholder in capitals (RECIPE,
RUN_DIR, X) or synopsis syntax (`[`, `|`, `...`).

Files a doc defines: a ```yaml block whose first line is `# file: NAME.yaml` is written to a
scratch folder, and a command naming NAME.yaml runs there. A ```yaml block whose first line is
`# recipes/....yaml` shows that recipe annotated: it must hold the same data as the file.

Lineage commands run against a fresh, empty SQLite store (DISTILL_LINEAGE_URL in tmp_path):
the docs show them as they answer after a run, and an empty store answers "holds no ... yet"
with exit 1, which is accepted in place of 0 for those commands only. Their flags and
arguments are still checked: a usage error exits 2 and fails.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from distill.cli import app

REPO = Path(__file__).resolve().parents[1]
DOC_FILES = [REPO / "README.md", REPO / "recipes" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([\w+-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
SHELLS = {"sh", "bash", "console", "shell"}
OFFLINE = {"validate", "ls", "licence", "lineage"}  # answer offline in seconds
PLACEHOLDER = re.compile(r"(?<![\w.-])[A-Z][A-Z0-9_]*(?![\w.-])")  # RECIPE, RUN_DIR, X, JOB_ID
SYNOPSIS = ("[", " | ", "...")
EXITS = re.compile(r"#\s*exits\s+(\d+)\s*$")
DEFINES = re.compile(r"#\s*file:\s*(\S+)\s*$")
MIN_RUN = 10  # so the test cannot pass by finding nothing
# Pages other authors write; a link to one is allowed while it does not exist yet.
PENDING_PAGES = {"docs/recipe-reference.md", "docs/extending.md"}


@dataclass(frozen=True)
class Command:
    doc: str  # path relative to the repository
    line: int
    text: str
    args: tuple[str, ...]  # after `distill`
    expected: int

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"


def blocks(path: Path):
    """(info string, first line number, body) of every fenced block."""
    text = path.read_text()
    for m in FENCE.finditer(text):
        yield m.group(1).lower(), text.count("\n", 0, m.start(2)) + 1, m.group(2)


def collect() -> tuple[list[Command], list[tuple[str, str]]]:
    """Every offline command to run, and every (doc line, why) skipped."""
    found, skipped = [], []
    for path in DOC_FILES:
        doc = path.relative_to(REPO).as_posix()
        for info, first, body in blocks(path):
            if info not in SHELLS:
                continue
            for offset, raw in enumerate(body.splitlines()):
                line = raw.strip()
                line = line[2:] if line.startswith("$ ") else line
                if not line.startswith("distill "):
                    continue
                where = f"{doc}:{first + offset}: {line}"
                words = shlex.split(line, comments=True)
                shown = " ".join(words)
                if PLACEHOLDER.search(shown) or any(s in shown for s in SYNOPSIS):
                    skipped.append((where, "placeholder or synopsis"))
                    continue
                if words[1] not in OFFLINE:
                    skipped.append((where, f"`distill {words[1]}` needs a model, a cluster or a run"))
                    continue
                m = EXITS.search(line)
                found.append(Command(doc, first + offset, line, tuple(words[1:]), int(m.group(1)) if m else 0))
    return found, skipped


def defined_files() -> dict[str, str]:
    """name -> text of every file a doc defines with a `# file: NAME` first line."""
    files: dict[str, str] = {}
    for path in DOC_FILES:
        for info, first, body in blocks(path):
            m = DEFINES.match(body.splitlines()[0]) if body.strip() else None
            if info in ("yaml", "yml") and m:
                name = m.group(1)
                assert name not in files or files[name] == body, f"{path.name}:{first}: {name} is defined twice, differently"
                files[name] = body
    return files


COMMANDS, SKIPPED = collect()
FILES = defined_files()
runner = CliRunner()


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """A fresh, empty lineage store, and the files the docs define in a folder of their own."""
    monkeypatch.setenv("DISTILL_LINEAGE_URL", f"sqlite:///{tmp_path / 'lineage.sqlite'}")
    folder = tmp_path / "doc-files"
    folder.mkdir()
    for name, text in FILES.items():
        (folder / name).write_text(text)
    return folder


def output_of(result) -> str:
    text = result.output or ""
    try:
        text += result.stderr or ""
    except ValueError:  # stderr not captured apart from stdout
        pass
    return text


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_documented_command_exits_as_shown(command, scratch, monkeypatch):
    names_a_doc_file = any(arg in FILES for arg in command.args)
    monkeypatch.chdir(scratch if names_a_doc_file else REPO)
    result = runner.invoke(app, list(command.args), terminal_width=200)
    out = output_of(result)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{command}\nraised {result.exception!r}\n{out}") from result.exception
    code = result.exit_code
    if command.args[0] == "lineage" and command.expected == 0 and code == 1:
        # The empty store answered that it holds nothing of that kind yet: what it says before any run.
        assert re.search(r"holds no \w+ yet", out), f"{command}\nexit 1 without the empty store's answer:\n{out}"
        return
    assert code == command.expected, f"{command}\nexit {code}, the doc shows {command.expected}:\n{out}"


def test_enough_documented_commands_are_run():
    kinds = {c.args[0] for c in COMMANDS}
    assert len(COMMANDS) >= MIN_RUN, (COMMANDS, SKIPPED)
    assert kinds == OFFLINE, f"no documented command of kind {OFFLINE - kinds}"
    assert any(c.expected == 2 for c in COMMANDS), "no documented refusal is checked"
    docs_with_commands = {c.doc for c in COMMANDS}
    assert {"README.md", "recipes/README.md"} <= docs_with_commands


def test_every_command_that_names_a_doc_file_has_it():
    for command in COMMANDS:
        for arg in command.args:
            if arg.endswith((".yaml", ".yml")) and not arg.startswith("recipes/"):
                assert arg in FILES, f"{command}: {arg} is neither a recipe nor a file a doc defines"


def test_annotated_recipes_match_their_files():
    shown = 0
    for path in DOC_FILES:
        for info, first, body in blocks(path):
            head = body.splitlines()[0].strip() if body.strip() else ""
            m = re.fullmatch(r"#\s*(recipes/\S+\.ya?ml)", head)
            if info in ("yaml", "yml") and m:
                target = REPO / m.group(1)
                assert target.is_file(), f"{path.name}:{first}: {m.group(1)} does not exist"
                assert yaml.safe_load(body) == yaml.safe_load(target.read_text()), (
                    f"{path.name}:{first}: the annotated {m.group(1)} differs from the file")
                shown += 1
    assert shown >= 1, "the README shows no recipe"


def test_readme_is_a_product_page():
    readme = REPO / "README.md"
    size = readme.stat().st_size
    assert size <= 10_500, f"README.md is {size} bytes; keep it at most ~10 KB and move detail to docs/"
    text = readme.read_text()
    assert "make demo" in text and "make test" in text


def test_relative_links_resolve():
    link = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")
    for path in DOC_FILES:
        for target, _ in link.findall(path.read_text()):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            resolved = (path.parent / target).resolve()
            relative = resolved.relative_to(REPO).as_posix() if resolved.is_relative_to(REPO) else str(resolved)
            assert resolved.exists() or relative in PENDING_PAGES, f"{path.relative_to(REPO)}: broken link {target}"


def _sections(text: str) -> dict[str, str]:
    """`### \\`name\\`` heading -> the text up to the next heading."""
    parts = re.split(r"^#{2,3} ", text, flags=re.M)
    out = {}
    for part in parts:
        m = re.match(r"`([\w-]+)`\s*\n", part)
        if m:
            out[m.group(1)] = part
    return out


def test_every_shipped_verifier_and_filter_is_documented_with_its_parameters():
    from distill.filters import FILTERS
    from distill.verifiers import VERIFIERS

    sections = _sections((REPO / "docs" / "verifiers-and-filters.md").read_text())
    checked = 0
    for registry in (VERIFIERS, FILTERS):
        for entry in registry:
            if entry.origin:  # a plug-in of an installed distribution: documented by its authors
                continue
            assert entry.name in sections, f"docs/verifiers-and-filters.md has no section for {entry.name}"
            for key in entry.params.model_fields:
                assert f"`{key}`" in sections[entry.name], f"{entry.name}: parameter {key} is not documented"
            checked += 1
    assert checked >= 13  # 6 verifiers, 7 filters
