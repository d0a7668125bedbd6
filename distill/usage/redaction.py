"""Secrets and personal data out of a logged call before it is stored, the task kept learnable.

Every text of a call is read: the turns sent, the arguments of every tool call, the tool results,
the answer, the tool definitions, the request's other fields, the error message and the client
and workload ids. JSON texts (arguments, most tool results) are read value by value, each with
its key, and rewritten as JSON.

Detectors (all in distill.filters): `pii` (secrets, payment cards, e-mail, phone, IP),
`identifiers` (IBAN and national ids, by checksum), `people` (names and addresses by rule) and,
where it is installed, `ner` (spaCy's recogniser, for names the rules miss). Where two findings
overlap, the more severe kind (KINDS order), then the longer, wins.

Consistency: a call's findings become one table, value -> typed placeholder (`<PERSON_1>`,
`<EMAIL_2>`), and that table is applied to every text of the call. So a name found in the user's
turn is replaced in the tool arguments and the answer too, even where no detector would have
found it there; numbers compare by their letters and digits ("DE89 3704..." and "DE893704...")
and e-mail addresses without case. A name's words are replaced on their own as well ("Maria"
after "Maria Gonzalez"). Placeholders are numbered per call, in the order values first appear.

Each call records what was redacted: kind, field path and count, never the value.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterator

from distill.filters.identifiers import find_identifiers
from distill.filters.ner import load_ner, ner_unavailable
from distill.filters.people import find_by_key, find_people, load_rules
from distill.filters.pii import Allow, Finding, PiiParams, find_pii
from distill.usage.records import Call

KINDS = ("secret", "card", "iban", "national-id", "email", "phone", "ip", "address", "person")
_RANK = {k: i for i, k in enumerate(KINDS)}
_BY_CHARACTERS = {"card", "iban", "national-id", "phone"}  # compared by letters and digits only


@dataclass
class Unit:
    """One string to read: a text field, or a value inside a JSON text with its key."""

    path: str
    text: str
    key: str | None = None
    ner: bool = True  # free text; not tool definitions or parameters, whose capitalised words are names of things


@dataclass
class Slot:
    """A field of the call: its path, text, and whether it is JSON to read value by value."""

    path: str
    text: str
    is_json: bool
    ner: bool = True


def _parse_json(text: str) -> Any:
    stripped = text.strip()
    if not stripped or stripped[0] not in "[{":
        return None
    try:
        return json.loads(stripped)
    except json.JSONDecodeError:
        return None


def _slots(call: Call) -> list[Slot]:
    out = []
    for side, turns in (("prompt", call.prompt), ("completion", call.completion)):
        for i, turn in enumerate(turns):
            if isinstance(turn.get("content"), str):
                out.append(Slot(f"{side}[{i}].content", turn["content"], _parse_json(turn["content"]) is not None))
            for j, tc in enumerate(turn.get("tool_calls") or []):
                args = tc["function"]["arguments"]
                out.append(Slot(f"{side}[{i}].tool_calls[{j}].function.arguments", args, _parse_json(args) is not None))
    if call.tools:
        out.append(Slot("tools", json.dumps(call.tools, ensure_ascii=False), True, ner=False))
    if call.request_params:
        out.append(Slot("request_params", json.dumps(call.request_params, ensure_ascii=False), True, ner=False))
    for name in ("status_reason", "client_id", "workload_id"):
        if getattr(call, name):
            out.append(Slot(name, getattr(call, name), False, ner=name == "status_reason"))
    return out


def _leaves(value: Any, path: str, key: str | None = None) -> Iterator[tuple[str, str | None, Any]]:
    """(path, key, value) of every string and number in a JSON value, keys included as strings."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield f"{path}.{k}", None, str(k)
            yield from _leaves(v, f"{path}.{k}", str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, f"{path}[{i}]", key)
    elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
        yield path, key, value


def _units(slot: Slot) -> list[Unit]:
    if not slot.is_json:
        return [Unit(slot.path, slot.text, None, slot.ner)]
    return [Unit(p, str(v), k, slot.ner and isinstance(v, str)) for p, k, v in _leaves(_parse_json(slot.text), slot.path)]


def _normal(kind: str, value: str) -> str:
    if kind in _BY_CHARACTERS:
        return "".join(ch for ch in value if ch.isalnum()).upper()
    return value.casefold() if kind == "email" else " ".join(value.split())


def _resolve(findings: list[Finding]) -> list[Finding]:
    """Non-overlapping findings: the more severe kind, then the longer, wins."""
    kept: list[Finding] = []
    for f in sorted(findings, key=lambda f: (_RANK[f.kind], f.start - f.end, f.start)):
        if all(f.end <= k.start or k.end <= f.start for k in kept):
            kept.append(f)
    return sorted(kept, key=lambda f: f.start)


class Table:
    """value -> placeholder for one call, and the replacement of every value in any text."""

    def __init__(self):
        self.by_value: dict[str, tuple[str, str]] = {}  # written value -> (kind, placeholder)
        self.by_key: dict[tuple[str, str], str] = {}  # (kind, normal form) -> placeholder
        self.numbers: Counter = Counter()
        self._regex: re.Pattern | None = None

    def add(self, kind: str, value: str, placeholder: str | None = None) -> str:
        key = (kind, _normal(kind, value))
        if placeholder is None and key not in self.by_key and kind == "address":
            # The same place written shorter or longer ("42 Elm Street, Springfield" and the
            # same with its ZIP) keeps one placeholder.
            placeholder = next((p for (k, n), p in self.by_key.items() if k == kind and (n in key[1] or key[1] in n)), None)
        if placeholder is None and key not in self.by_key:
            self.numbers[kind] += 1
            self.by_key[key] = f"<{kind.upper().replace('-', '_')}_{self.numbers[kind]}>"
        placeholder = placeholder or self.by_key[key]
        self.by_key.setdefault(key, placeholder)
        self.by_value.setdefault(value, (kind, placeholder))
        if kind == "email":
            self.by_value.setdefault(value.casefold(), (kind, placeholder))
        self._regex = None
        return placeholder

    def regex(self) -> re.Pattern | None:
        if self._regex is None and self.by_value:
            parts = []
            for value, (kind, _) in sorted(self.by_value.items(), key=lambda kv: len(kv[0]), reverse=True):
                before = r"(?<!\w)" if value[0].isalnum() or value[0] == "_" else ""
                after = r"(?!\w)" if value[-1].isalnum() or value[-1] == "_" else ""
                written = f"(?i:{re.escape(value)})" if kind == "email" else re.escape(value)
                parts.append(before + written + after)
            self._regex = re.compile("|".join(parts))
        return self._regex

    def lookup(self, written: str) -> tuple[str, str]:
        return self.by_value.get(written) or self.by_value[written.casefold()]  # e-mail matches ignore case

    def replace(self, text: str, path: str, counts: Counter) -> str:
        regex = self.regex()
        if regex is None:
            return text

        def swap(m: re.Match) -> str:
            found = self.lookup(m.group(0))
            counts[(found[0], path)] += 1
            return found[1]

        return regex.sub(swap, text)


class Redactor:
    """Finds and replaces secrets and personal data in calls, a batch at a time (NER runs once a batch)."""

    def __init__(self, use_ner: bool = True):
        self.ner = load_ner() if use_ner else None
        self.ner_missing = "" if self.ner else (ner_unavailable() or "NER switched off")
        self.allow = Allow.of(PiiParams().allow)
        self.not_names = load_rules().not_names

    def describe(self) -> str:
        names = f"rules and NER ({self.ner.describe()})" if self.ner else f"rules only; NER unavailable: {self.ner_missing}"
        return f"secrets, cards, e-mail, phone, IP (pii patterns); IBAN and national ids (checksums); names and addresses: {names}"

    def _find(self, unit: Unit) -> list[Finding]:
        found = [f for f in find_pii(unit.text, allow=self.allow) if not f.allowed]
        found += find_identifiers(unit.text)
        found += find_by_key(unit.key, unit.text) if unit.key else find_people(unit.text)
        return found

    def redact(self, calls: list[Call]) -> None:
        """Rewrites each call in place and sets its `redactions`."""
        slots = [_slots(c) for c in calls]
        units = [[_units(s) for s in call_slots] for call_slots in slots]
        # An agent's calls repeat their system prompt, tools and history: each distinct text is read once.
        found: dict[tuple, list[Finding]] = {}
        for call_units in units:
            for slot_units in call_units:
                for u in slot_units:
                    if (u.text, u.key) not in found:
                        found[(u.text, u.key)] = self._find(u)
        prose = list(dict.fromkeys(u.text for call_units in units for slot_units in call_units for u in slot_units
                                   if u.ner and any(ch.isupper() for ch in u.text)))
        by_ner = dict(zip(prose, self.ner.find(prose))) if self.ner and prose else {}
        for call, call_slots, call_units in zip(calls, slots, units):
            table = Table()
            for slot_units in call_units:
                for u in slot_units:
                    recognised = by_ner.get(u.text, []) if u.ner else []
                    for f in _resolve(found[(u.text, u.key)] + recognised):
                        self._add(table, f.kind, u.text[f.start:f.end])
            counts: Counter = Counter()
            if table.by_value:
                rewritten = {s.path: self._rewrite(s, table, counts) for s in call_slots}
                _apply(call, rewritten)
            call.redactions = [{"kind": k, "path": p, "count": n} for (k, p), n in sorted(counts.items())]

    def _add(self, table: Table, kind: str, value: str) -> None:
        value = value.strip()
        if len(value) < 2:
            return
        placeholder = table.add(kind, value)
        if kind == "person":  # the name's words alone: "Maria" and "Gonzalez" after "Maria Gonzalez"
            words = [w.strip(",.") for w in value.split()]
            if len(words) > 1:
                for w in words:
                    if len(w) >= 3 and w[0].isupper() and w not in self.not_names:
                        table.add(kind, w, placeholder)

    @staticmethod
    def _rewrite(slot: Slot, table: Table, counts: Counter) -> str:
        if not slot.is_json:
            return table.replace(slot.text, slot.path, counts)
        before = sum(counts.values())
        value = _rewrite_json(_parse_json(slot.text), slot.path, table, counts)
        # Untouched JSON keeps its original text; changed JSON is written anew.
        return slot.text if sum(counts.values()) == before else json.dumps(value, ensure_ascii=False)


def _rewrite_json(value: Any, path: str, table: Table, counts: Counter) -> Any:
    if isinstance(value, dict):
        return {table.replace(str(k), f"{path}.{k}", counts): _rewrite_json(v, f"{path}.{k}", table, counts)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite_json(v, f"{path}[{i}]", table, counts) for i, v in enumerate(value)]
    if isinstance(value, str):
        return table.replace(value, path, counts)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        replaced = table.replace(str(value), path, counts)
        return value if replaced == str(value) else replaced  # a number that was a card or an id becomes text
    return value


def _apply(call: Call, rewritten: dict[str, str]) -> None:
    for side in ("prompt", "completion"):
        for i, turn in enumerate(getattr(call, side)):
            if isinstance(turn.get("content"), str):
                turn["content"] = rewritten[f"{side}[{i}].content"]
            for j, tc in enumerate(turn.get("tool_calls") or []):
                tc["function"]["arguments"] = rewritten[f"{side}[{i}].tool_calls[{j}].function.arguments"]
    if call.tools:
        call.tools = json.loads(rewritten["tools"])
    if call.request_params:
        call.request_params = json.loads(rewritten["request_params"])
    for name in ("status_reason", "client_id", "workload_id"):
        if getattr(call, name):
            setattr(call, name, rewritten[name])
