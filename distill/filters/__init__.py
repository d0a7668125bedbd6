"""Filters: licence, safety, PII, duplicates, decontamination. Registered by short name.

None is registered yet; the registry exists so recipes, `distill ls` and errors read one list.
"""

from distill.registry import Registry

FILTERS = Registry("filter")
