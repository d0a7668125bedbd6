"""The licence engine: which teachers may train which students, and what a student then owes.

Licence terms are data (terms/*.yaml, checked by terms.Terms); the engine applies them.
"""

from distill.licensing.engine import (
    Acknowledgement,
    Decision,
    Issue,
    LicenceError,
    Obligation,
    Ref,
    StudentLicence,
    Use,
    decide,
    decide_for_recipe,
    render_text,
    to_dict,
)
from distill.licensing.terms import Catalog, Terms, UnknownLicence, load_catalog, shipped

__all__ = [
    "Acknowledgement", "Catalog", "Decision", "Issue", "LicenceError", "Obligation", "Ref",
    "StudentLicence", "Terms", "UnknownLicence", "Use", "decide", "decide_for_recipe",
    "load_catalog", "render_text", "shipped", "to_dict",
]
