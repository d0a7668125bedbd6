"""Prompt sources: local files, datasets saved to disk, and registered generators.

Every prompt gets a stable content id (a hash of its question text), so the same
question has the same id in every run, whatever file or order it came from.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any, Iterable, Literal

import yaml
from pydantic import Field, PrivateAttr, ValidationInfo, field_validator

from distill.registry import Params, Registry

# Plug-ins register under the entry-point group `distill.prompt_sources`, or a recipe names
# them as `package.module:function` (docs/extending.md).
PROMPT_SOURCES = Registry(
    "prompt source", group="distill.prompt_sources",
    check=lambda e: None if "licence" in e.params.model_fields else
    "its params need a `licence` field: every sample carries the licence of the prompt it came from",
)
HERE = Path(__file__).parent


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
    # Required: every sample carries the licence of the prompt it came from.
    licence: str = Field(min_length=1)
    limit: int | None = Field(None, ge=1)
    _sha256: str = PrivateAttr(default="")
    _base_dir: Path = PrivateAttr(default=Path("."))

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


class HfDiskParams(FileParams):
    split: str | None = None  # for a DatasetDict: which split to read


def _rows_to_prompts(rows: Iterable[dict], p: FileParams) -> Iterable[dict]:
    for i, row in enumerate(rows):
        if p.limit is not None and i >= p.limit:
            return
        if not isinstance(row, dict):
            raise ValueError(f"{p.path}: row {i} is {type(row).__name__}, not an object with a {p.question_field!r} field")
        if p.question_field not in row:
            raise ValueError(f"{p.path}: row {i} has no field {p.question_field!r}; fields: {', '.join(row)}")
        if row[p.question_field] is None:  # a null cell (columnar files) would become the question "None"
            raise ValueError(f"{p.path}: row {i}: field {p.question_field!r} is null")
        ref = row.get(p.answer_field) if p.answer_field else None
        if ref is not None and not isinstance(ref, str):
            # Structured references (a tool-call spec, a list of tests) stay parseable as JSON;
            # numpy scalars and arrays from Parquet become their plain Python values first.
            ref = json.dumps(ref.tolist() if hasattr(ref, "tolist") else ref, default=str)
        yield {"question": str(row[p.question_field]), "reference": ref}


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

    def rows():
        with p.full_path.open() as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{p.path}:{n}: not valid JSON: {e}") from None

    return _rows_to_prompts(rows(), p)


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
    import pyarrow.parquet as pq

    return _rows_to_prompts(pq.read_table(p.full_path).to_pylist(), p)


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
    from datasets import DatasetDict, load_from_disk

    ds = load_from_disk(str(p.full_path))
    if isinstance(ds, DatasetDict):
        if p.split is None or p.split not in ds:
            raise ValueError(f"{p.path}: a DatasetDict; set split to one of {', '.join(ds)}")
        ds = ds[p.split]
    return _rows_to_prompts(iter(ds), p)


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


def load_prompts(components: list, split: str) -> list[dict]:
    """All prompts of a split, deduplicated by id (first occurrence wins)."""
    out: dict[str, dict] = {}
    for component in components:
        entry = PROMPT_SOURCES.get(component.source)
        params = component.params
        for row in entry.fn(params):
            pid = prompt_id(row["question"])
            if pid not in out:
                out[pid] = {
                    "prompt_id": pid,
                    "split": split,
                    "question": row["question"],
                    "reference": row["reference"],
                    "source": component.source + (f":{params.path}" if isinstance(params, FileParams) else ""),
                    "source_licence": params.licence,
                }
    return list(out.values())
