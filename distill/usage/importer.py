"""`distill usage import`: log files into the store, curated before anything is written.

The order matters: every file is read (a missing or unreadable file, or one without a single
readable record, stops the import before the store is touched); calls already in the store are
set aside by id; retries are found on the requests as logged; then the new calls are redacted,
and only then marked for duplicates (on the redacted text) and written.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from distill.lineage import code_version
from distill.usage import curation
from distill.usage.formats import AUTO, FileRead, read_file
from distill.usage.records import Call, Malformed
from distill.usage.redaction import KINDS, Redactor
from distill.usage.store import PART_ROWS, UsageStore

REDACT_BATCH = 256  # calls read together: their shared texts (system prompt, tools, history) are read once
SHOWN_MALFORMED = 20


@dataclass
class ImportSummary:
    store: str
    files: list[FileRead]
    new: int = 0
    present: int = 0  # already in the store
    repeated: int = 0  # the same call twice in these files
    failed: Counter = field(default_factory=Counter)  # status -> new calls
    duplicates: Counter = field(default_factory=Counter)  # exact | near -> new calls
    redactions: Counter = field(default_factory=Counter)  # kind -> values replaced
    redacted_calls: int = 0
    detectors: str = ""
    ner: bool = False
    at: str = ""

    @property
    def malformed(self) -> list[Malformed]:
        return [m for f in self.files for m in f.malformed]

    @property
    def read(self) -> int:
        return sum(len(f.calls) for f in self.files)

    def record(self) -> dict:
        """This import as the manifest keeps it: counts and locations, no content."""
        return {
            "at": self.at, "code_version": code_version(),
            "files": [{"file": f.file, "format": f.format, "calls": len(f.calls), "malformed": len(f.malformed),
                       "skipped_spans": f.skipped} for f in self.files],
            "new": self.new, "already_present": self.present, "repeated": self.repeated,
            "malformed": [str(m) for m in self.malformed[:SHOWN_MALFORMED]], "malformed_total": len(self.malformed),
            "failed": dict(self.failed), "duplicates": dict(self.duplicates),
            "redactions": dict(self.redactions), "redacted_calls": self.redacted_calls, "detectors": self.detectors,
        }

    def malformed_lines(self) -> list[str]:
        bad = self.malformed
        lines = [f"malformed: {m}" for m in bad[:SHOWN_MALFORMED]]
        if len(bad) > SHOWN_MALFORMED:
            lines.append(f"... and {len(bad) - SHOWN_MALFORMED} more malformed records")
        return lines

    def paragraph(self) -> str:
        files = "; ".join(f"{f.file}: {f.format}, {len(f.calls)} calls" + (f", {len(f.malformed)} malformed" if f.malformed else "")
                          + (f", {f.skipped} spans that are not model calls" if f.skipped else "") for f in self.files)
        text = (f"Imported {len(self.files)} file(s) into {self.store} ({files}): {self.new} new calls, "
                f"{self.present} already in the store"
                + (f", {self.repeated} repeated within these files" if self.repeated else "") + ". ")
        n_bad = len(self.malformed)
        text += f"{n_bad} malformed record(s) skipped (listed above). " if n_bad else "No malformed records. "
        failed, dup = sum(self.failed.values()), sum(self.duplicates.values())
        text += (f"Of the new calls: {failed} failed"
                 + (" (" + ", ".join(f"{n} {s}" for s, n in sorted(self.failed.items())) + ")" if failed else "")
                 + f", {dup} duplicates" + (f" ({self.duplicates['exact']} exact, {self.duplicates['near']} near)" if dup else "")
                 + ", all kept and marked; ")
        kinds = ", ".join(f"{self.redactions[k]} {k}" for k in KINDS if self.redactions[k])
        text += f"{self.redacted_calls} call(s) redacted before writing ({kinds}). " if kinds else "nothing needed redacting. "
        return text + f"Detectors: {self.detectors}."


def _row(call: Call, key: str, signature: bytes, at: datetime) -> dict:
    def turns(messages: list[dict]) -> list[dict]:
        return [{"role": m["role"], "content": m.get("content"), "tool_calls": m.get("tool_calls"),
                 "tool_call_id": m.get("tool_call_id")} for m in messages]

    return {
        "call_id": call.call_id, "format": call.format, "source_file": call.source.file,
        "source_line": call.source.line, "source_span": call.source.span, "imported_at": at,
        "timestamp": call.timestamp, "workload_id": call.workload_id, "client_id": call.client_id,
        "model": call.model, "response_model": call.response_model,
        "prompt": turns(call.prompt), "completion": turns(call.completion),
        "tools": json.dumps(call.tools, ensure_ascii=False) if call.tools else None,
        "request_params": json.dumps(call.request_params, ensure_ascii=False, sort_keys=True),
        "finish_reason": call.finish_reason, "prompt_tokens": call.prompt_tokens,
        "completion_tokens": call.completion_tokens, "latency_ms": call.latency_ms,
        "status": call.status, "status_reason": call.status_reason,
        "duplicate": call.duplicate, "duplicate_of": call.duplicate_of,
        "content_key": key, "signature": signature, "redactions": call.redactions,
    }


def import_logs(files: list[str], store_uri: str, format: str = AUTO,
                progress: Callable[[str], object] | None = None, use_ner: bool = True) -> ImportSummary:
    """Reads, curates and stores the calls of `files`. Raises LogFileError or StoreError (nothing
    is written then)."""
    store = UsageStore.open(store_uri)
    bar = progress("read logs") if progress else None
    if bar:
        bar.start(total=len(files))
    reads = []
    for f in files:
        reads.append(read_file(f, format))
        if bar:
            bar.advance(1)
    at = datetime.now(timezone.utc)
    summary = ImportSummary(store_uri, reads, at=at.isoformat(timespec="seconds"))
    calls, seen = [], set()
    for r in reads:
        for c in r.calls:
            if c.call_id in seen:
                summary.repeated += 1
            else:
                seen.add(c.call_id)
                calls.append(c)
    curation.mark_retries(calls, [curation.retry_key(c) for c in calls])
    redactor = Redactor(use_ner)
    summary.detectors, summary.ner = redactor.describe(), redactor.ner is not None
    with store.locked():
        index = store.read_index(curation.NEAR.num_perm)
        known = set(index.ids)
        new = [c for c in calls if c.call_id not in known]
        summary.present, summary.new = len(calls) - len(new), len(new)
        bar = progress("redact") if progress and new else None
        if bar:
            bar.start(total=len(new))
        for lo in range(0, len(new), REDACT_BATCH):
            redactor.redact(new[lo: lo + REDACT_BATCH])
            if bar:
                bar.advance(len(new[lo: lo + REDACT_BATCH]))
        keys = [curation.content_key(c) for c in new]
        sig = curation.signatures(new)
        curation.mark_duplicates(new, keys, sig, index.ids, index.content_keys, index.signatures)
        for c in new:
            if c.status != "ok":
                summary.failed[c.status] += 1
            if c.duplicate:
                summary.duplicates[c.duplicate] += 1
            for r in c.redactions:
                summary.redactions[r["kind"]] += r["count"]
            summary.redacted_calls += bool(c.redactions)
        rows = [_row(c, k, s.tobytes(), at) for c, k, s in zip(new, keys, sig)]
        parts = [store.write_part(rows[lo: lo + PART_ROWS]) for lo in range(0, len(rows), PART_ROWS)]
        store.commit(parts, summary.record())
    return summary
