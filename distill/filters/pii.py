"""pii: find personal data and secrets in rows, and redact them or flag the row.

Kinds, most severe first (a row's category is the most severe kind found):
- secret: API keys and tokens of known shapes (AWS, GitHub, OpenAI/Anthropic sk-, Slack,
  Google, Stripe, Hugging Face, JWTs, bearer tokens), `api_key = "..."` / `password: ...`
  assignments with a long value, credentials in URLs, PEM private key blocks;
- card: 13-19 digit payment card numbers whose Luhn checksum holds;
- email: e-mail addresses;
- phone: international (+CC) numbers and common national forms written with separators;
- ip: IPv4 (four parts, each 0-255) and IPv6 addresses (confirmed by the ipaddress module).

The patterns are data (pii.yaml, beside this module); the checks a regular expression cannot
make (digit counts, Luhn, address parsing) are code here. Plain numbers, decimals, dates,
years and version strings are not findings.

`redact: true` replaces each finding in the completion by a placeholder ("[EMAIL]") and the
row is kept with the new text; `redact: false` only flags the row for the stage to drop or
mark. Only the completion can be rewritten: a row whose prompt holds a finding (`on: prompt`
or `both`) is flagged without a rewrite, even with `redact: true`, so the recipe's mode decides
it. The reason counts findings by kind ("2 e-mail addresses, 1 secret") and never repeats them.

Values in `allow` are never findings: a value is compared whole and case-insensitively (card
numbers by their digits, IP addresses as parsed addresses), and an entry starting with "@"
allows every e-mail address at that domain and its subdomains. Setting `allow` replaces the default list.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import Field

from distill.filters import FILTERS, FilterContext, FilterVerdict
from distill.registry import Params

PATTERNS_FILE = Path(__file__).with_name("pii.yaml")

# Most severe first: a leaked secret is usable at once, a card number nearly so.
Kind = Literal["secret", "card", "email", "phone", "ip"]
KINDS: tuple[str, ...] = get_args(Kind)


class PiiParams(Params):
    # The completion is what the student learns to reproduce; prompts are often public data.
    on: Literal["completion", "prompt", "both"] = "completion"
    kinds: list[Kind] = Field(default_factory=lambda: list(KINDS), min_length=1)  # all: any one of them leaks
    # Keep the sample with placeholders rather than lose it: the rest of the text is still good.
    redact: bool = True
    # Identify no one yet fill tutorials: RFC 2606 domains, git SSH logins, loopback/any IPs, public test cards.
    allow: list[Annotated[str, Field(min_length=1)]] = [
        "@example.com", "@example.org", "@example.net", "git@github.com", "git@gitlab.com",
        "127.0.0.1", "0.0.0.0", "::1",
        "4242 4242 4242 4242", "4111 1111 1111 1111",
    ]  # fmt: skip


@dataclass(frozen=True)
class Pattern:
    kind: str
    name: str
    regex: re.Pattern
    check: str | None
    digits: tuple[int, int] | None


@dataclass(frozen=True)
class Finding:
    kind: str
    start: int
    end: int
    allowed: bool


def luhn(digits: str) -> bool:
    """The Luhn checksum (payment cards, and some national ids) holds for these digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def _passes(pattern: Pattern, text: str) -> bool:
    """The code checks a regular expression cannot make."""
    digits = _digits(text)
    if pattern.digits and not pattern.digits[0] <= len(digits) <= pattern.digits[1]:
        return False
    if pattern.check == "phone":
        return not re.fullmatch(r"\+?[0-9]+\.[0-9]+", text)  # +1.000001234567 is a decimal
    if pattern.check == "luhn":
        return len(set(digits)) > 1 and luhn(digits)  # all zeros passes Luhn but is no card
    if pattern.check == "ipv4":
        try:
            ipaddress.IPv4Address(text)  # also rejects leading zeros (01.02.03.04), octal to some parsers
        except ValueError:
            return False
        return True
    if pattern.check == "ipv6":
        try:
            ipaddress.IPv6Address(text)
        except ValueError:
            return False
        return True
    return True


_CHECKS = {None, "digits", "phone", "luhn", "ipv4", "ipv6"}


@functools.cache
def load_patterns(path: Path = PATTERNS_FILE) -> tuple[dict[str, dict], tuple[Pattern, ...]]:
    """(kind -> {placeholder, noun}, every pattern), read and compiled once."""
    data = yaml.safe_load(path.read_text())
    if set(data) != set(KINDS):
        raise ValueError(f"{path}: kinds {sorted(data)} do not match pii.Kind {sorted(KINDS)}")
    kinds, patterns = {}, []
    for kind in KINDS:
        spec = data[kind]
        kinds[kind] = {"placeholder": spec["placeholder"], "noun": tuple(spec["noun"])}
        for p in spec["patterns"]:
            where = f"{path}: {kind}.{p['name']}"
            if p.get("check") not in _CHECKS:
                raise ValueError(f"{where}: unknown check {p['check']!r}; known: {sorted(c for c in _CHECKS if c)}")
            try:
                regex = re.compile(p["regex"], re.VERBOSE | re.ASCII)
            except re.error as e:
                raise ValueError(f"{where}: bad regular expression: {e}") from None
            digits = tuple(p["digits"]) if "digits" in p else None
            patterns.append(Pattern(kind, p["name"], regex, p.get("check"), digits))
    return kinds, tuple(patterns)


@dataclass(frozen=True)
class Allow:
    values: frozenset[str]  # casefolded, whole
    domains: frozenset[str]  # "@example.com" entries, casefolded
    cards: frozenset[str]  # digits only
    ips: frozenset[Any]  # parsed addresses

    @classmethod
    def of(cls, entries: list[str]) -> Allow:
        entries = [e.strip() for e in entries]
        ips = set()
        for e in entries:
            try:
                ips.add(ipaddress.ip_address(e))
            except ValueError:
                pass
        return cls(
            frozenset(e.casefold() for e in entries),
            frozenset(e.casefold() for e in entries if e.startswith("@")),
            frozenset(_digits(e) for e in entries if _digits(e)),
            frozenset(ips),
        )

    def __contains__(self, finding: tuple[str, str]) -> bool:
        kind, text = finding
        if text.casefold() in self.values:
            return True
        if kind == "email":  # the domain or any parent of it: @example.com covers mail.example.com
            labels = text.rpartition("@")[2].casefold().split(".")
            return any("@" + ".".join(labels[i:]) in self.domains for i in range(len(labels)))
        if kind == "card":
            return _digits(text) in self.cards
        if kind == "ip":
            try:
                return ipaddress.ip_address(text) in self.ips
            except ValueError:
                return False
        return False


def find_pii(text: str, kinds: list[str] | tuple[str, ...] = KINDS, allow: Allow | None = None) -> list[Finding]:
    """Non-overlapping findings in text order; where two overlap the more severe, then the longer, wins.

    Allowed values are returned too (allowed=True) so that nothing inside them is reported.
    """
    _, patterns = load_patterns()
    rank = {kind: i for i, kind in enumerate(KINDS)}
    candidates = []
    for pattern in patterns:
        if pattern.kind not in kinds:
            continue
        for match in pattern.regex.finditer(text):
            group = "value" if "value" in pattern.regex.groupindex else 0
            start, end = match.span(group)
            found = text[start:end]
            if _passes(pattern, found):
                allowed = allow is not None and (pattern.kind, found) in allow
                candidates.append(Finding(pattern.kind, start, end, allowed))
    candidates.sort(key=lambda f: (rank[f.kind], f.start - f.end, f.start))
    kept: list[Finding] = []
    for f in candidates:
        if all(f.end <= k.start or k.end <= f.start for k in kept):
            kept.append(f)
    return sorted(kept, key=lambda f: f.start)


def redact(text: str, findings: list[Finding]) -> str:
    kinds, _ = load_patterns()
    out, at = [], 0
    for f in findings:
        if not f.allowed:
            out += [text[at : f.start], kinds[f.kind]["placeholder"]]
            at = f.end
    return "".join(out) + text[at:]


def _counts(findings: list[Finding]) -> str:
    """Counts by kind, most severe first: "1 secret, 2 e-mail addresses"."""
    kinds, _ = load_patterns()
    parts = []
    for kind in KINDS:
        n = sum(1 for f in findings if f.kind == kind and not f.allowed)
        if n:
            singular, plural = kinds[kind]["noun"]
            parts.append(f"{n} {singular if n == 1 else plural}")
    return ", ".join(parts)


def _verdict(row: dict, params: PiiParams, allow: Allow) -> FilterVerdict:
    texts = {"prompt": row.get("prompt_text") or "", "completion": row.get("completion") or ""}
    fields = ["prompt", "completion"] if params.on == "both" else [params.on]
    found = {f: [x for x in find_pii(texts[f], params.kinds, allow) if not x.allowed] for f in fields}
    if not any(found.values()):
        return FilterVerdict(False)
    every = [x for f in fields for x in found[f]]
    category = min((x.kind for x in every), key=KINDS.index)
    if params.on == "completion":
        reason = _counts(every)
    else:  # say where: a prompt's findings cannot be redacted
        reason = "; ".join(f"{f}: {_counts(found[f])}" for f in fields if found[f])
    rewrite = None
    if params.redact and found.get("completion") and not found.get("prompt"):
        rewrite = redact(texts["completion"], found["completion"])
    return FilterVerdict(True, reason, category, rewrite)


@FILTERS.register(
    "pii",
    params=PiiParams,
    example="""
filters:
  - name: pii
    mode: drop  # what happens to a flagged row that is not redacted (its prompt holds PII)
    on: both
    kinds: [secret, card, email, phone, ip]
    redact: true
    allow: ["@example.com", "127.0.0.1", "support@our-company.test"]  # replaces the defaults
""",
)
def filter_pii(rows: list[dict], params: PiiParams, ctx: FilterContext) -> list[FilterVerdict]:
    """Redacts (or flags) e-mail addresses, phone numbers, card numbers, IP addresses and secrets."""
    allow = Allow.of(params.allow)
    return [_verdict(row, params, allow) for row in rows]
