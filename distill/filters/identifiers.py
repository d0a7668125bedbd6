"""Bank account (IBAN) and national identity numbers, found by pattern and confirmed by checksum.

Kinds: `iban` and `national-id` (US SSN, UK National Insurance number, Spanish DNI/NIE,
Italian codice fiscale, French NIR, Swedish personnummer, and, after their keyword, Dutch BSN,
Polish PESEL and German Steuer-ID). The patterns are data (identifiers.yaml beside this
module); the checks are code here: a regular expression finds candidates, a checksum or the
issuer's rules decide, so order numbers, phone numbers and dates are rarely taken for an id.

Findings are `distill.filters.pii.Finding`s, so they mix with the `pii` filter's.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from distill.filters.pii import Finding, luhn

PATTERNS_FILE = Path(__file__).with_name("identifiers.yaml")
KINDS = ("iban", "national-id")


@dataclass(frozen=True)
class IdPattern:
    kind: str
    name: str
    regex: re.Pattern
    check: str


def _alnum(text: str) -> str:
    return "".join(ch for ch in text if ch.isalnum())


def _iban_end(text: str, lengths: dict[str, int]) -> int | None:
    """Where the IBAN at the start of `text` ends (its country fixes its length), or None.

    The pattern is greedy, so a candidate may run into a following upper-case word; it is cut
    at the country's length, and the cut must fall at the end of a word."""
    want = lengths.get(text[:2])
    if want is None:
        return None
    seen = 0
    for i, ch in enumerate(text):
        if ch.isalnum():
            seen += 1
            if seen == want:
                end = i + 1
                break
    else:
        return None
    if end < len(text) and text[end].isalnum():
        return None
    code = _alnum(text[:end])
    rearranged = code[4:] + code[:4]
    return end if int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1 else None


def _us_ssn(value: str) -> bool:
    d = _alnum(value)
    return d[:3] not in ("000", "666") and d[0] != "9" and d[3:5] != "00" and d[5:] != "0000"


# Letters never issued as the first or second prefix letter, and pairs never issued.
_NINO_FIRST, _NINO_SECOND = set("DFIQUV"), set("DFIOQUV")
_NINO_PAIRS = {"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"}


def _uk_nino(value: str) -> bool:
    code = _alnum(value)
    return code[0] not in _NINO_FIRST and code[1] not in _NINO_SECOND and code[:2] not in _NINO_PAIRS


def _es_dni(value: str) -> bool:
    code = _alnum(value)
    number = str("XYZ".index(code[0])) + code[1:-1] if code[0] in "XYZ" else code[:-1]  # NIE: X=0, Y=1, Z=2
    return "TRWAGMYFPDXBNJZSQVHLCKE"[int(number) % 23] == code[-1]


# The codice fiscale's odd-position values, for 0-9 and A-Z alike (a digit d counts as the d-th letter).
_CF_ODD = [1, 0, 5, 7, 9, 13, 15, 17, 19, 21, 2, 4, 18, 20, 11, 3, 6, 8, 12, 14, 16, 10, 22, 25, 24, 23]


def _it_codice_fiscale(value: str) -> bool:
    total = 0
    for i, ch in enumerate(value[:15]):
        v = int(ch) if ch.isdigit() else ord(ch) - ord("A")
        total += _CF_ODD[v] if i % 2 == 0 else v  # positions 1, 3, 5, ... counted from one are "odd"
    return chr(ord("A") + total % 26) == value[15]


def _fr_nir(value: str) -> bool:
    code = _alnum(value)
    body = code[:13].replace("2A", "19").replace("2B", "18")  # Corsica's departments, as the key counts them
    return 97 - int(body) % 97 == int(code[13:])


def _se_personnummer(value: str) -> bool:
    digits = _alnum(value)[-10:]
    month, day = int(digits[2:4]), int(digits[4:6])
    day = day - 60 if day > 60 else day  # a co-ordination number adds 60 to the day
    return 1 <= month <= 12 and 1 <= day <= 31 and luhn(digits)


def _nl_bsn(value: str) -> bool:
    d = [int(c) for c in _alnum(value)]
    return sum(w * x for w, x in zip((9, 8, 7, 6, 5, 4, 3, 2, -1), d)) % 11 == 0 and any(d)


def _pl_pesel(value: str) -> bool:
    d = [int(c) for c in value]
    return (10 - sum(w * x for w, x in zip((1, 3, 7, 9, 1, 3, 7, 9, 1, 3), d)) % 10) % 10 == d[10]


def _de_steuer_id(value: str) -> bool:
    """ISO 7064 MOD 11,10 over the first ten digits; the first digit is never 0."""
    d = _alnum(value)
    if d[0] == "0":
        return False
    product = 10
    for ch in d[:10]:
        s = (int(ch) + product) % 10 or 10
        product = (2 * s) % 11
    return (11 - product) % 10 == int(d[10])


CHECKS: dict[str, Callable[[str], bool]] = {
    "us-ssn": _us_ssn, "uk-nino": _uk_nino, "es-dni": _es_dni, "it-codice-fiscale": _it_codice_fiscale,
    "fr-nir": _fr_nir, "se-personnummer": _se_personnummer, "nl-bsn": _nl_bsn, "pl-pesel": _pl_pesel,
    "de-steuer-id": _de_steuer_id,
}


@functools.cache
def load_patterns(path: Path = PATTERNS_FILE) -> tuple[tuple[IdPattern, ...], dict[str, int]]:
    """(every pattern, IBAN length per country), read and compiled once."""
    data = yaml.safe_load(path.read_text())
    if set(data) != set(KINDS):
        raise ValueError(f"{path}: kinds {sorted(data)} are not {list(KINDS)}")
    patterns = []
    for kind in KINDS:
        for p in data[kind]["patterns"]:
            if p["check"] != "iban" and p["check"] not in CHECKS:
                raise ValueError(f"{path}: {kind}.{p['name']}: unknown check {p['check']!r}; known: iban, {', '.join(CHECKS)}")
            patterns.append(IdPattern(kind, p["name"], re.compile(p["regex"], re.VERBOSE), p["check"]))
    lengths = data["iban"]["lengths"]
    if bad := [k for k in lengths if not (isinstance(k, str) and len(k) == 2)]:
        raise ValueError(f"{path}: iban.lengths: {bad} are not two-letter country codes (quote YAML's booleans: \"NO\")")
    return tuple(patterns), dict(lengths)


def find_identifiers(text: str) -> list[Finding]:
    """IBANs and national ids in `text` whose checksum or rules hold, in text order, not overlapping."""
    patterns, lengths = load_patterns()
    found: list[Finding] = []
    for pattern in patterns:
        for match in pattern.regex.finditer(text):
            group = "value" if "value" in pattern.regex.groupindex else 0
            start, end = match.span(group)
            if pattern.check == "iban":
                cut = _iban_end(text[start:end], lengths)
                if cut is None:
                    continue
                end = start + cut
            elif not CHECKS[pattern.check](text[start:end]):
                continue
            if all(end <= f.start or f.end <= start for f in found):
                found.append(Finding(pattern.kind, start, end, False))
    return sorted(found, key=lambda f: f.start)
