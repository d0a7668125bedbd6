"""Prompt sources: local files, datasets saved to disk, and registered generators.

A prompt is a question (with its reference answer), or a conversation: OpenAI-format turns
ending in the one to answer, with the tool definitions offered (distill/prompts/conversation.py).
A source yields dicts with "question" and "reference", and for a conversation "messages",
"tools" and optionally "category".

Every prompt gets a stable content id (a hash of its question text, or of the whole conversation
and its tools), so the same prompt has the same id in every run, whatever file or order it came from.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

import yaml
from pydantic import Field, PrivateAttr, ValidationInfo, field_validator

from distill.prompts import conversation
from distill.registry import Params, Registry

# Plug-ins register under the entry-point group `distill.prompt_sources`, or a recipe names
# them as `package.module:function` (docs/extending.md).
PROMPT_SOURCES = Registry(
    "prompt source", group="distill.prompt_sources",
    check=lambda e: None if "licence" in e.params.model_fields else
    "its params need a `licence` field: every sample carries the licence of the prompt it came from",
)
HERE = Path(__file__).parent
log = logging.getLogger(__name__)


def prompt_id(question: str) -> str:
    return hashlib.sha256(question.encode()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    if path.is_dir():  # a `datasets` folder: hash its files in a stable order
        for p in sorted(path.rglob("*")):
            if p.is_file():
                digest.update(str(p.relative_to(path)).encode())
                digest.update(p.read_bytes())
    else:
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


class FileParams(Params):
    path: str
    question_field: str = "question"
    answer_field: str | None = None  # None: no reference answer; verifiers that need one say None
    # Conversation rows: the field holding the OpenAI-format turns (the question is then the last
    # user turn's text), the one holding the tool definitions, and a category to report scores by.
    messages_field: str | None = None
    tools_field: str | None = None
    category_field: str | None = None
    # Required: every sample carries the licence of the prompt it came from.
    licence: str = Field(min_length=1)
    limit: int | None = Field(None, ge=1)
    _sha256: str = PrivateAttr(default="")
    _base_dir: Path = PrivateAttr(default=Path("."))
    # The recipe's prompts.bad_rows, and how many rows it left out; set when the recipe loads.
    _bad_rows: str = PrivateAttr(default="fail")
    _skipped_rows: int = PrivateAttr(default=0)

    @field_validator("path")
    @classmethod
    def _exists(cls, v: str, info: ValidationInfo) -> str:
        base = Path((info.context or {}).get("base_dir", "."))
        full = base / v
        if not full.exists():
            raise ValueError(f"file not found (looked for {full}; paths are relative to the recipe file)")
        return v

    def model_post_init(self, context: Any) -> None:
        self._base_dir = Path((context or {}).get("base_dir", "."))
        self._sha256 = file_sha256(self.full_path)

    @property
    def full_path(self) -> Path:
        return self._base_dir / self.path

    @property
    def content_sha256(self) -> str:
        return self._sha256

    @property
    def skipped_rows(self) -> int:
        """Bad rows left out (prompts.bad_rows: skip), as counted when the recipe loaded."""
        return self._skipped_rows


class HfDiskParams(FileParams):
    split: str | None = None  # for a DatasetDict: which split to read


class SourceError(ValueError):
    """A file source that cannot be read as configured; the message names the file and the fix."""


class Unreadable:
    """A row that could not be parsed; it stands in the row stream so the check can list it
    beside the others instead of stopping at it."""

    def __init__(self, why: str):
        self.why = why


SHOWN_FIELDS = 12  # a wide row's field list is cut here: the message stays one readable line

# A file source yields (where, row) pairs: `where` locates the row for a user (`path:line`
# for JSON Lines, `path: row i` for tables), `row` is a dict, anything else JSON holds, or
# Unreadable.
Located = Iterator[tuple[str, Any]]


def row_problem(row: Any, p: FileParams) -> str | None:
    """Why a row cannot be a prompt, or None. The one rule both the load-time check and the
    readers apply, so a file that passes `distill validate` reads the same at run time."""
    if isinstance(row, Unreadable):
        return row.why
    if not isinstance(row, dict):
        return f"a {type(row).__name__}, not an object with a {p.question_field!r} field"
    names = list(map(str, row))
    fields = ", ".join(names[:SHOWN_FIELDS]) + (f", ... ({len(names)} in all)" if len(names) > SHOWN_FIELDS else "")
    fields = fields or "none"
    if p.messages_field:
        return _conversation_row_problem(row, p, fields)
    if p.question_field not in row:
        return (f"no field {p.question_field!r}; the row's fields: {fields} "
                "(set question_field to the one that holds the question)")
    question = row[p.question_field]
    if question is None:  # a null cell (columnar files) would become the question "None"
        return f"field {p.question_field!r} is null"
    if not isinstance(question, str):
        return f"field {p.question_field!r} is {type(question).__name__}, not a string"
    if not question.strip():
        return f"field {p.question_field!r} is empty"
    if p.answer_field and p.answer_field not in row:
        return (f"no field {p.answer_field!r} (answer_field); the row's fields: {fields} "
                "(set answer_field to the one that holds the answer, or remove it)")
    return None


def _plain(value: Any) -> Any:
    """Parquet and `datasets` give numpy arrays and scalars; JSON text is read as JSON."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _json_field(row: dict, name: str) -> Any:
    value = _plain(row[name])
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"field {name!r} is text that is not JSON ({e.msg} at column {e.colno})") from None
    return value


def _conversation_row_problem(row: dict, p: FileParams, fields: str) -> str | None:
    for name, what in ((p.messages_field, "messages_field"), (p.tools_field, "tools_field"),
                       (p.answer_field, "answer_field")):
        if name and name not in row:
            return (f"no field {name!r} ({what}); the row's fields: {fields} "
                    f"(set {what} to the one that holds it)")
    try:
        messages = _json_field(row, p.messages_field)
        tools = _json_field(row, p.tools_field) if p.tools_field else None
    except ValueError as e:
        return str(e)
    found = conversation.problems(messages, tools)
    return "; ".join(found) if found else None


def _within_limit(located: Located, p: FileParams) -> Iterator[tuple[str, Any, str | None]]:
    """(where, row, problem) up to the `limit`-th good row: rows past it are never used, so
    they are neither read nor checked."""
    good = 0
    for where, row in located:
        problem = row_problem(row, p)
        yield where, row, problem
        if problem is None:
            good += 1
            if p.limit is not None and good >= p.limit:
                return


def _rows_to_prompts(located: Located, p: FileParams) -> Iterator[dict]:
    for where, row, problem in _within_limit(located, p):
        if problem is not None:
            if p._bad_rows == "skip":
                continue
            # load_recipe has already checked every row; this guards a file changed since.
            raise ValueError(f"{where}: {problem}")
        ref = row.get(p.answer_field) if p.answer_field else None
        if ref is not None and not isinstance(ref, str):
            # Structured references (a tool-call spec, a list of tests) stay parseable as JSON;
            # numpy scalars and arrays from Parquet become their plain Python values first.
            ref = json.dumps(_plain(ref), default=str)
        if not p.messages_field:
            yield {"question": row[p.question_field], "reference": ref}
            continue
        messages = _json_field(row, p.messages_field)
        category = row.get(p.category_field) if p.category_field else None
        yield {"question": conversation.question_of(messages), "reference": ref, "messages": messages,
               "tools": _json_field(row, p.tools_field) if p.tools_field else None,
               "category": None if category is None else str(category)}


def _jsonl_rows(p: FileParams) -> Located:
    # Bytes, decoded line by line: one line that is not UTF-8 is one bad row, not a failed file.
    with p.full_path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            where = f"{p.path}:{n}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield where, Unreadable("not UTF-8 text")
                continue
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as e:
                yield where, Unreadable(f"not valid JSON ({e})")


def _parquet_rows(p: FileParams) -> Located:
    import pyarrow.parquet as pq

    i = 0
    for batch in pq.ParquetFile(p.full_path).iter_batches():  # a batch at a time: files can be large
        for row in batch.to_pylist():
            yield f"{p.path}: row {i}", row
            i += 1


def _hf_disk_rows(p: HfDiskParams) -> Located:
    from datasets import DatasetDict, load_from_disk

    ds = load_from_disk(str(p.full_path))
    if isinstance(ds, DatasetDict):
        if p.split is None or p.split not in ds:
            raise SourceError(f"{p.path}: a DatasetDict; set split to one of {', '.join(ds)}")
        ds = ds[p.split]
    for i, row in enumerate(ds):  # memory-mapped Arrow: rows are read as they are iterated
        yield f"{p.path}: row {i}", row


# The file sources' row readers, by source name; the recipe check reads every row through these.
ROW_READERS = {"jsonl": _jsonl_rows, "parquet": _parquet_rows, "hf-disk": _hf_disk_rows}
LISTED_BAD_ROWS = 20  # enough to see the pattern; the rest are counted, not printed


def check_rows(source: str, p: Params, bad_rows: str = "fail") -> list[str]:
    """Problems with the rows of a file source, each located `file:line` (or `file: row i`): the
    first LISTED_BAD_ROWS bad rows, then how many more. Reads every row once, streaming, so a
    bad file is found by `distill validate` rather than midway through a run. With bad_rows
    "skip" a bad row is no problem: the readers leave it out and `p.skipped_rows` counts it.
    Sources that read no file (generators, plug-ins) have nothing to check."""
    reader = ROW_READERS.get(source)
    if reader is None or not isinstance(p, FileParams):
        return []
    p._bad_rows = bad_rows
    problems: list[str] = []
    bad = 0
    try:
        for where, _, problem in _within_limit(reader(p), p):
            if problem is not None:
                bad += 1
                if bad <= LISTED_BAD_ROWS:
                    problems.append(f"{where}: {problem}")
    except SourceError as e:
        return [str(e)]
    except ImportError as e:
        return [f"{p.path}: cannot read a {source} source: {e}; install the missing package"]
    except Exception as e:  # a corrupt or truncated file: the reader's own words, not a traceback
        return [f"{p.path}: cannot read as {source}: {type(e).__name__}: {e}"]
    if bad_rows == "skip":
        p._skipped_rows = bad
        if bad:
            log.warning("%s: %d bad row(s) left out (prompts.bad_rows: skip)", p.path, bad)
        return []
    if bad > LISTED_BAD_ROWS:
        problems.append(f"{p.path}: and {bad - LISTED_BAD_ROWS} more bad rows")
    return problems


@PROMPT_SOURCES.register("jsonl", params=FileParams, example="""
prompts:
  train:
    - source: jsonl
      path: data/questions.jsonl
      question_field: problem
      answer_field: solution
      licence: cc-by-4.0
""")
def read_jsonl(p: FileParams) -> Iterable[dict]:
    """Questions from a local JSON Lines file, one object per line."""
    return _rows_to_prompts(_jsonl_rows(p), p)


@PROMPT_SOURCES.register("parquet", params=FileParams, example="""
prompts:
  train:
    - source: parquet
      path: data/questions.parquet
      question_field: question
      answer_field: answer
      licence: apache-2.0
""")
def read_parquet(p: FileParams) -> Iterable[dict]:
    """Questions from a local Parquet file."""
    return _rows_to_prompts(_parquet_rows(p), p)


@PROMPT_SOURCES.register("hf-disk", params=HfDiskParams, example="""
prompts:
  train:
    - source: hf-disk
      path: data/gsm8k            # made with Dataset.save_to_disk
      split: train
      question_field: question
      answer_field: answer
      licence: mit
""")
def read_hf_disk(p: HfDiskParams) -> Iterable[dict]:
    """Questions from a Hugging Face `datasets` dataset saved with save_to_disk."""
    return _rows_to_prompts(_hf_disk_rows(p), p)


class ArithmeticParams(Params):
    count: int = Field(ge=1, le=1_000_000)
    seed: int = 0
    max_operand: int = Field(30, ge=1)  # small numbers: a small teacher gets some right
    operations: list[Literal["+", "-", "*"]] = Field(["+"], min_length=1)
    style: Literal["word", "plain"] = "word"  # plain: only "What is a + b?" templates
    licence: str = "apache-2.0"  # generated here, under the project's own licence


@PROMPT_SOURCES.register("arithmetic", params=ArithmeticParams, example="""
prompts:
  train:
    - source: arithmetic
      count: 300
      seed: 0
      operations: ["+", "-"]
""")
def generate_arithmetic(p: ArithmeticParams) -> Iterable[dict]:
    """Seeded arithmetic word problems with exact reference answers."""
    data = yaml.safe_load((HERE / "arithmetic.yaml").read_text())
    templates = [t for t in data["templates"] if t["op"] in p.operations]
    if p.style == "plain":
        templates = [t for t in templates if t["text"].startswith("What is")]
    rng = random.Random(p.seed)
    seen: set[str] = set()
    attempts = 0
    while len(seen) < p.count:
        attempts += 1
        if attempts > 50 * p.count:  # distinct questions: a small space runs out
            raise ValueError(
                f"arithmetic: only {len(seen)} distinct questions found for count {p.count}; "
                "raise max_operand, add operations or use style: word"
            )
        t = rng.choice(templates)
        a, b = rng.randint(1, p.max_operand), rng.randint(1, p.max_operand)
        if t["op"] == "-" and b > a:
            a, b = b, a  # keep answers non-negative, as word problems imply
        answer = {"+": a + b, "-": a - b, "*": a * b}[t["op"]]
        text = t["text"].format(a=a, b=b, name=rng.choice(data["names"]), item=rng.choice(data["items"]))
        question = f"{text} {data['instruction']}"
        if question not in seen:
            seen.add(question)
            yield {"question": question, "reference": str(answer)}


def prompt_row(row: dict, where: str) -> dict:
    """The stored form of a source's row: id, question, reference and, for a conversation, the
    canonical turns and tools as JSON. Raises ValueError (naming `where`) for a broken conversation."""
    messages = row.get("messages")
    if messages is None:
        return {"prompt_id": prompt_id(row["question"]), "question": row["question"], "reference": row["reference"],
                "messages": None, "tools": None, "category": row.get("category")}
    tools = row.get("tools")
    if found := conversation.problems(messages, tools):
        raise ValueError(f"{where}: {'; '.join(found)}")
    messages, tools = conversation.canonical(messages), conversation.canonical_tools(tools)
    return {"prompt_id": conversation.conversation_id(messages, tools),
            "question": row.get("question") or conversation.question_of(messages), "reference": row["reference"],
            "messages": json.dumps(messages, ensure_ascii=False),
            "tools": json.dumps(tools, ensure_ascii=False) if tools else None, "category": row.get("category")}


def load_prompts(components: list, split: str) -> list[dict]:
    """All prompts of a split, deduplicated by id (first occurrence wins)."""
    out: dict[str, dict] = {}
    for component in components:
        entry = PROMPT_SOURCES.get(component.source)
        params = component.params
        source = component.source + (f":{params.path}" if isinstance(params, FileParams) else "")
        for i, row in enumerate(entry.fn(params)):
            stored = prompt_row(row, f"{source}: row {i}")
            if stored["prompt_id"] not in out:
                out[stored["prompt_id"]] = {"split": split, **stored, "source": source,
                                            "source_licence": params.licence}
    return list(out.values())


def tools_of(prompt: dict) -> list[dict] | None:
    """A stored prompt's tool definitions, decoded; None when it has none."""
    return json.loads(prompt["tools"]) if prompt.get("tools") else None


def messages_of(prompt: dict) -> list[dict] | None:
    """A stored prompt's conversation, decoded; None for a question."""
    return json.loads(prompt["messages"]) if prompt.get("messages") else None


def _load_builtins() -> None:
    # Importing every module of the package runs its @PROMPT_SOURCES.register decorators.
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_load_builtins()
