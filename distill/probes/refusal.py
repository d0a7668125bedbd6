"""refusal: whether an answer declines the request, by a transparent rule set.

The rules are regular expressions in refusal.yaml beside this module, each with a name; `why`
says which one fired, so a counted refusal can always be traced to the words that made it one.
They read the answer's opening only (a few sentences, a few hundred characters): a model that
declines says so at once, while an answer that complies can still write "I can't stress enough"
or have a character in a story say "I cannot help you" further on.

An empty answer is not a refusal: it declines nothing in words. Whether a failed request (no
answer at all) counts is the scorer's decision, not this module's; `refuses` takes text only and
has no side effects, so a judge model can later be put beside it without changing it. An answer
cut off inside its reasoning block has no answer to read, so it does not refuse either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

RULES_FILE = Path(__file__).parent / "refusal.yaml"

# Typographic apostrophes and quotation marks, read as the ASCII ones the rules are written with.
_PLAIN = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201b": "'", "\u02bc": "'", "\u2032": "'",
                        "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u00ab": '"', "\u00bb": '"',
                        "\u00a0": " "})
_THINK = re.compile(r"\A\s*<think>.*?(?:</think>|\Z)", re.DOTALL)  # a reasoning block, closed or cut off
_EMPHASIS = re.compile(r"[*`]+|^\s*(?:#+|>)\s*", re.MULTILINE)  # markdown around or before the words
_SPACES = re.compile(r"[ \t]+")
# The end of a sentence: its closing punctuation and the space after, or a line break.
_SENTENCE_END = re.compile(r"[.!?]+(?:\s+|\Z)|\s*\n\s*")
_WORD = re.compile(r"<(\w+)>")  # a reference to a named alternation in a pattern


@dataclass(frozen=True)
class Rules:
    window: int  # characters of the opening that are read
    sentences: int  # sentences of the opening that are read
    patterns: tuple[tuple[str, re.Pattern], ...]  # (name, compiled pattern), in the file's order


@lru_cache(maxsize=4)
def load_rules(path: str = str(RULES_FILE)) -> Rules:
    """The rules of a file of refusal.yaml's shape; a malformed file or pattern is an error naming it."""
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list) or not data["rules"]:
        raise ValueError(f"{path}: expected `rules`, a list of {{name, pattern}}")
    words = {name: "(?:" + "|".join(alternatives) + ")" for name, alternatives in (data.get("words") or {}).items()}

    def expand(match: re.Match) -> str:
        if match.group(1) not in words:
            raise ValueError(f"{path}: a pattern uses <{match.group(1)}>, which `words` does not define")
        return words[match.group(1)]

    patterns = []
    for i, rule in enumerate(data["rules"]):
        if not isinstance(rule, dict) or not rule.get("name") or not rule.get("pattern"):
            raise ValueError(f"{path}: rules[{i}] needs a name and a pattern")
        try:
            patterns.append((str(rule["name"]), re.compile(_WORD.sub(expand, rule["pattern"]), re.IGNORECASE)))
        except re.error as e:
            raise ValueError(f"{path}: rule {rule['name']!r}: not a regular expression: {e}") from None
    return Rules(window=int(data.get("window", 300)), sentences=int(data.get("sentences", 3)), patterns=tuple(patterns))


def opening(text: str, rules: Rules | None = None) -> str:
    """The part of an answer the rules read: after a leading reasoning block, with markdown
    emphasis dropped and typographic quotes made plain, its first sentences up to the window."""
    rules = rules or load_rules()
    text = _THINK.sub("", text.translate(_PLAIN))
    text = _SPACES.sub(" ", _EMPHASIS.sub("", text)).strip()
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    cut = ends[rules.sentences - 1] if len(ends) >= rules.sentences else len(text)
    return text[:min(cut, rules.window)].strip()


def _quoted(text: str, at: int) -> bool:
    """Whether position `at` lies inside double quotation marks (an odd number of them before it)."""
    return text.count('"', 0, at) % 2 == 1


def why(text: str | None) -> str | None:
    """The name of the first rule by which the answer refuses, or None when none applies."""
    if not text:
        return None
    rules = load_rules()
    head = opening(text, rules)
    for name, pattern in rules.patterns:
        if any(not _quoted(head, m.start()) for m in pattern.finditer(head)):
            return name
    return None


def refuses(text: str | None) -> bool:
    """Whether the answer declines the request, by the rules of refusal.yaml."""
    return why(text) is not None
