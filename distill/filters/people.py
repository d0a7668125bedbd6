"""People's names and postal addresses, found by rules a reader can check.

Kinds: `person` and `address`. A name is found after a title ("Dr. Aisha Okafor"), an
introduction ("my name is ..."), a greeting ("Dear ..."), on the line after a sign-off
("Regards,\\n..."), or as a known given name followed by a capitalised surname ("Sven
Eriksson"); in JSON, as the value of a key such as `passenger_name`. An address is a house
number and a street ("42 Elm Street", "12 rue de la Paix", "Via Roma 12", "Hauptstraße 5")
with what follows it (unit, city, state and ZIP, postcode), a PO box, a US "City, ST 12345",
or a UK postcode; in JSON, the value of a key such as `shipping_address`.

Everything the rules read is data: people.yaml (word lists, keys, patterns) and
given_names.txt beside this module. Rules miss names that appear without any of these cues;
the spaCy NER detector (distill.filters.ner) finds more of those where it is installed.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from distill.filters.pii import Finding

RULES_FILE = Path(__file__).with_name("people.yaml")
GIVEN_NAMES_FILE = Path(__file__).with_name("given_names.txt")
KINDS = ("address", "person")  # an address wins where the two overlap: "Maria Street 5" is a place

# Upper- and lower-case letters of the Latin scripts (ASCII to Latin Extended-B), as classes:
# Python's re has no \p{Lu}.
_LATIN = [chr(c) for c in range(0x41, 0x250)]
UPPER = "[" + "".join(re.escape(ch) for ch in _LATIN if ch.isupper()) + "]"
LOWER = "[" + "".join(re.escape(ch) for ch in _LATIN if ch.islower()) + "]"
_REFERENCE = re.compile(r"\{([A-Z_]+)\}")


@dataclass(frozen=True)
class Rule:
    kind: str
    name: str
    regex: re.Pattern
    weak: bool = False  # the name must start with a known given name
    surname: bool = False  # a given name needs a surname after it (after dropping not-names)


@dataclass(frozen=True)
class Rules:
    rules: tuple[Rule, ...]
    given: frozenset[str]
    not_names: frozenset[str]
    name_keys: frozenset[str]
    generic_name_keys: frozenset[str]
    address_keys: frozenset[str]
    postcode_keys: frozenset[str]
    name_value: re.Pattern  # a JSON value that is a name: capitalised words only


def _alternation(words) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


def _expand(pattern: str, fragments: dict[str, str], where: str) -> str:
    """Replaces {NAME} references until none is left (fragments refer to each other)."""
    for _ in range(10):
        expanded = _REFERENCE.sub(lambda m: fragments[m.group(1)] if m.group(1) in fragments else m.group(0), pattern)
        if expanded == pattern:
            break
        pattern = expanded
    if unknown := sorted(set(_REFERENCE.findall(pattern))):
        raise ValueError(f"{where}: unknown reference {', '.join('{' + u + '}' for u in unknown)}")
    return pattern


@functools.cache
def load_rules(path: Path = RULES_FILE, names_path: Path = GIVEN_NAMES_FILE) -> Rules:
    data = yaml.safe_load(path.read_text())
    given = frozenset(line.strip() for line in names_path.read_text().splitlines()
                      if line.strip() and not line.startswith("#"))
    fragments = {
        "UPPER": UPPER, "LOWER": LOWER,
        "TITLES": _alternation(data["titles"]), "PARTICLES": _alternation(data["particles"]),
        "STREET_TYPES": _alternation(data["street_types"]), "STATES": _alternation(data["us_states"]),
        "GIVEN": _alternation(given),
        **{k: f"(?:{v})" for k, v in data["fragments"].items()},
    }
    rules = []
    for kind in KINDS:
        for r in data[kind]:
            where = f"{path}: {kind}.{r['name']}"
            try:
                regex = re.compile(_expand(r["regex"], fragments, where), re.VERBOSE)
            except re.error as e:
                raise ValueError(f"{where}: bad regular expression: {e}") from None
            rules.append(Rule(kind, r["name"], regex, r.get("weak", False), r.get("surname", False)))
    name_value = re.compile(_expand(r"[ ]*{NAME}[ ]*", fragments, str(path)), re.VERBOSE)
    keys = {k: frozenset(data[k]) for k in ("name_keys", "generic_name_keys", "address_keys", "postcode_keys")}
    return Rules(tuple(rules), given, frozenset(data["not_names"]), name_value=name_value, **keys)


def _trim_name(text: str, start: int, end: int, rules: Rules) -> tuple[int, int] | None:
    """The name's span without the not-names at its ends ("Maria Gonzalez Tomorrow"), or None."""
    words = list(re.finditer(r"\S+", text[start:end]))
    while words and words[-1].group(0) in rules.not_names:
        words.pop()
    if not words or words[0].group(0) in rules.not_names:
        return None
    return start + words[0].start(), start + words[-1].end()


def _starts_with_given(name: str, rules: Rules) -> bool:
    return name.split(" ", 1)[0] in rules.given


def find_people(text: str) -> list[Finding]:
    """Names and addresses in free text, in text order, not overlapping (an address wins)."""
    rules = load_rules()
    found: list[Finding] = []
    for rule in rules.rules:  # addresses first: KINDS order
        for match in rule.regex.finditer(text):
            group = "value" if "value" in rule.regex.groupindex else 0
            start, end = match.span(group)
            if rule.kind == "person":
                span = _trim_name(text, start, end, rules)
                if span is None:
                    continue
                start, end = span
                name = text[start:end]
                if rule.weak and not _starts_with_given(name, rules):
                    continue
                if rule.surname and " " not in name:
                    continue
            else:
                while end > start and text[end - 1] in " ,":
                    end -= 1
            if end > start and all(end <= f.start or f.end <= start for f in found):
                found.append(Finding(rule.kind, start, end, False))
    return sorted(found, key=lambda f: f.start)


def find_by_key(key: str, value: str) -> list[Finding]:
    """A JSON string value judged by its key: `passenger_name: "Kenji Watanabe"` is a person,
    `shipping_address: "..."` an address; free-text rules still apply to the value."""
    rules = load_rules()
    key = key.casefold().replace("-", "_")
    stripped = value.strip()
    start = value.index(stripped) if stripped else 0
    whole = None
    if key in rules.address_keys and re.search(r"[0-9]", stripped) and " " in stripped:  # not "0x7ffe..."
        whole = "address"
    elif key in rules.postcode_keys and re.search(r"[0-9]", stripped):
        whole = "address"
    elif rules.name_value.fullmatch(stripped) and stripped.split(" ", 1)[0] not in rules.not_names:
        if key in rules.name_keys or (key in rules.generic_name_keys and _starts_with_given(stripped, rules)):
            whole = "person"
    if whole:
        return [Finding(whole, start, start + len(stripped), False)]
    return find_people(value)
