"""The log formats by short name, and reading one file: its format found from its first JSON
value (or given), every record parsed, every malformed one kept with where it is.

FORMATS is the only list of format names: the CLI's --format choices and its errors read it.
A format module has NAME, DESCRIPTION, `sniff(first JSON value) -> bool` and
`read(file, lines) -> iterator of Call | Malformed` (an otel span that is no model call is
yielded as otel.Skipped).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from distill.usage import openai_log, otel
from distill.usage.records import Call, Malformed, Source

FORMATS = {m.NAME: m for m in (openai_log, otel)}
AUTO = "auto"


class LogFileError(Exception):
    """A log file that cannot be imported at all: missing, unreadable, or without one readable record."""


@dataclass
class FileRead:
    file: str
    format: str
    calls: list[Call] = field(default_factory=list)
    malformed: list[Malformed] = field(default_factory=list)
    skipped: int = 0  # spans that are not model calls


def _lines(file: str) -> list[str]:
    import fsspec

    try:
        with fsspec.open(file, "rt", encoding="utf-8", compression="infer") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        raise LogFileError(f"{file}: no such file; give the path of a log file (formats: {_names()})") from None
    except IsADirectoryError:
        raise LogFileError(f"{file}: a folder, not a log file; name the files in it (e.g. {file}/*.jsonl)") from None
    except UnicodeDecodeError as e:
        raise LogFileError(f"{file}: not UTF-8 text (byte {e.start}); logs are JSON text, maybe compressed "
                           "(.gz, .zst are read by their suffix)") from None
    except (OSError, ValueError) as e:
        raise LogFileError(f"{file}: cannot be read: {e}") from None


def _names() -> str:
    return ", ".join(f"{name} ({m.DESCRIPTION})" for name, m in FORMATS.items())


SNIFF_LINES = 100  # lines looked at for one that parses: a damaged first record must not hide the format


def _first_value(lines: list[str]) -> Any:
    """The file's first JSON value: its first line that parses (within SNIFF_LINES), else the whole
    file (a pretty-printed export)."""
    for line in lines[:SNIFF_LINES]:
        if line.strip():
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    try:
        return json.loads("\n".join(lines))
    except json.JSONDecodeError:
        return None


def detect(file: str, lines: list[str]) -> str:
    first = _first_value(lines)
    for name, module in FORMATS.items():
        if module.sniff(first):
            return name
    what = "it is empty" if not any(line.strip() for line in lines) else (
        f"none of its first {SNIFF_LINES} lines is JSON" if first is None else "its first record is neither")
    raise LogFileError(f"{file}: no readable record: {what}; the formats are {_names()}; "
                       f"fix the file, or name its format with --format")


def read_file(file: str, format: str = AUTO) -> FileRead:
    """Every record of one file; raises LogFileError when none can be read."""
    lines = _lines(file)
    name = detect(file, lines) if format == AUTO else format
    out = FileRead(file, name)
    for item in FORMATS[name].read(file, lines):
        if isinstance(item, Call):
            out.calls.append(item)
        elif isinstance(item, Malformed):
            out.malformed.append(item)
        else:
            out.skipped += 1
    if not out.calls:
        if out.malformed:
            first = out.malformed[0]
            raise LogFileError(f"{file}: no readable record ({len(out.malformed)} malformed; the first: {first}); "
                               f"is it {name} ({FORMATS[name].DESCRIPTION})? Fix it, or give --format")
        what = f"{out.skipped} spans, none of them a model call" if out.skipped else "no record"
        raise LogFileError(f"{file}: no readable record: {what}; give a log of model calls ({_names()})")
    return out


__all__ = ["AUTO", "FORMATS", "FileRead", "LogFileError", "Source", "detect", "read_file"]
