"""The licence engine: which teachers may train which students, and what a student then owes.

Licence terms are data (terms/*.yaml, checked by terms.Terms); engine.decide applies them to
the records in types.py, and render.py prints or serialises the decision.
"""

from distill.licensing.engine import decide
from distill.licensing.render import render_text, to_dict
from distill.licensing.terms import Catalog, Terms, UnknownLicence, load_catalog, shipped
from distill.licensing.types import (
    Acknowledgement,
    Decision,
    Issue,
    LicenceError,
    Obligation,
    Ref,
    SourceRole,
    StudentLicence,
    Use,
)

__all__ = [
    "Acknowledgement", "Catalog", "Decision", "Issue", "LicenceError", "Obligation", "Ref",
    "SourceRole", "StudentLicence", "Terms", "UnknownLicence", "Use", "decide",
    "load_catalog", "render_text", "shipped", "to_dict",
]
