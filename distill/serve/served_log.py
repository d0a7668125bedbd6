"""The served-call log: every call the router answered (or could not), appended as one JSON line
in the `openai` format `distill usage import` reads (request, response or error, timestamp,
latency_ms), plus `route` (who answered, why, the cluster) and `verdict` (the check of the
student's answer), which the import ignores and a replay reads.

Redacted at write exactly as the import redacts: the record is read by the import's own parser
into a Call, the import's Redactor rewrites it (secrets, cards, ids, e-mail, phones, names), and
the record is written back from the redacted Call. So nothing a client sent is on disk in the
clear, and importing the log redacts nothing twice. The verdict's reason can quote argument
values; it is redacted the same way.

Durable: each record is flushed and fsynced before the router answers. One file per writer
(served-<date>-<writer>.jsonl), so replicas never interleave lines.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path

from distill.usage import openai_log
from distill.usage.records import Call, Malformed, Source
from distill.usage.redaction import Redactor

PREFIX = "served-"


def _redacted_text(redactor: Redactor, text: str) -> str:
    """A free text (a verdict's reason) redacted as a call's error message is."""
    holder = Call(Source("served"), openai_log.NAME, "", [], [], status="error", status_reason=text)
    redactor.redact([holder])
    return holder.status_reason or ""


def redact_record(record: dict, redactor: Redactor) -> dict:
    """The record with its request, answer and error redacted as `distill usage import` would."""
    call = openai_log.parse_record(record, Source("served"))
    out = {k: v for k, v in record.items() if k not in ("request", "response", "error")}
    if isinstance(call, Malformed):
        # The import could not read it, so it cannot be redacted as the import would: keep no content.
        return {**out, "request": None, "unreadable": call.problem}
    redactor.redact([call])
    out["request"] = {**call.request_params, "model": call.model, "messages": call.prompt,
                      **({"tools": call.tools} if call.tools else {})}
    response, error = record.get("response"), record.get("error")
    if call.status == "error":
        kind = error.get("type") if isinstance(error, dict) else None
        reason = call.status_reason or ""
        out["error"] = {"type": kind or "error", "message": reason.removeprefix(f"{kind}: ") if kind else reason}
    else:
        choice = {**response["choices"][0], "message": call.completion[0]}
        out["response"] = {**response, "choices": [choice]}
    verdict = out.get("verdict")
    if isinstance(verdict, dict) and verdict.get("reason"):
        out["verdict"] = {**verdict, "reason": _redacted_text(redactor, verdict["reason"])}
    if call.redactions:
        out["redactions"] = call.redactions  # kind, field and count; never the value
    return out


class ServedLog:
    """Appends served calls to log_dir/served-<date>-<writer>.jsonl, redacted, one fsync per call."""

    def __init__(self, folder: str | Path, use_ner: bool = True):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.redactor = Redactor(use_ner)
        day = datetime.now(timezone.utc).strftime("%Y%m%d")
        self.path = self.folder / f"{PREFIX}{day}-{uuid.uuid4().hex[:8]}.jsonl"
        self._lock = threading.Lock()  # the redactor and the file: one call at a time

    def write(self, record: dict) -> None:
        with self._lock:
            line = json.dumps(redact_record(record, self.redactor), ensure_ascii=False, default=str) + "\n"
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())

    async def append(self, record: dict) -> None:
        await asyncio.to_thread(self.write, record)  # redaction and fsync must not block the event loop
