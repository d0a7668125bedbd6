"""`distill validate | run | submit | ls | ...`: the factory's command line.

The commands live in modules by what they act on (recipes and runs, Ray jobs, the catalogue, usage logs);
importing them registers them on the one Typer app.
"""

from distill.cli import recipes, probes, jobs, catalog, usage, serve  # noqa: F401, I001  (registers the commands, in help order)
from distill.cli.app import app

__all__ = ["app"]
