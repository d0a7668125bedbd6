"""The recipe: one YAML file drives every stage.

schema.py holds the sections (every default, with its reason), load.py reads and checks a file
and reports every problem at once, checks.py checks the keys passed through to TRL and vLLM,
licence.py asks the licence engine about a loaded recipe, reference.py writes the key reference.
"""

from distill.problems import Problem, RecipeError, RecipeLoader, yaml_error
from distill.recipe.load import load_recipe
from distill.recipe.schema import (Cluster, Component, Eval, Filter, Lora, PromptSource, Prompts, Recipe, Sampling,
                                   Section, Student, TeacherRef, Tracking, Train, Verifier)

__all__ = [
    "Cluster", "Component", "Eval", "Filter", "Lora", "Problem", "PromptSource", "Prompts", "Recipe", "RecipeError",
    "RecipeLoader", "Sampling", "Section", "Student", "TeacherRef", "Tracking", "Train", "Verifier", "load_recipe",
    "yaml_error",
]
