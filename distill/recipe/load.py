"""Loading a recipe: parse the YAML, check every field and component, resolve the teacher and
the student's base once, and report every problem at once (file, dotted key, bad value, what is
allowed), so a user fixes a recipe in one pass instead of one error per run."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import yaml
from pydantic import ValidationError

from distill.problems import Problem, RecipeError, RecipeLoader, dotted, problems_from, yaml_error
from distill.recipe.checks import check_kd, check_on_policy, check_passthrough
from distill.recipe.schema import Component, Filter, ProbeSpec, PromptSource, Recipe, Verifier
from distill.registry import Params, Registry
from distill.teachers import Teacher, load_teacher


def _check_components(
    recipe_data: dict, registry: Registry, loc: tuple, key: str, base: type[Component], base_dir: Path,
    check_data: Callable[[str, Params], list[str]] | None = None,
) -> tuple[list[Problem], list[Params]]:
    """Second pass: each component's name must be registered and its parameters valid;
    `check_data`, given the name and valid parameters, lists problems with the data they name."""
    problems: list[Problem] = []
    resolved: list[Params] = []
    items = recipe_data
    for part in loc:
        items = items.get(part) if isinstance(items, dict) else None
    if not isinstance(items, list):
        return problems, resolved
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get(key), str):
            continue  # the first pass already reported it
        name = item[key]
        if name not in registry:
            problems.append(Problem(dotted(loc + (i, key)), registry.unknown(name)))
            continue
        entry = registry.get(name)
        own = {k: v for k, v in item.items() if k not in base.model_fields}
        try:
            params = entry.params.model_validate(own, context={"base_dir": base_dir})
        except ValidationError as e:
            problems.extend(problems_from(e, entry.params, loc + (i,), tuple(base.model_fields)))
            continue
        resolved.append(params)
        if check_data is not None:
            problems.extend(Problem(dotted(loc + (i,)), m) for m in check_data(name, params))
    return problems, resolved


TASK_METRICS = ("pass@1", "pass@k", "greedy_accuracy")


def check_probes_and_gate(recipe: Recipe) -> list[Problem]:
    """Probe labels are unique, and every gate condition names a metric the run will measure."""
    from distill.probes import PROBES

    problems = []
    metrics: dict[str, list[str]] = {"task": list(TASK_METRICS)}
    for i, spec in enumerate(recipe.eval.probes):
        if spec.key in metrics:
            problems.append(Problem(dotted(("eval", "probes", i)), f"a second probe labelled {spec.key!r}: give it another `label`"))
        elif spec.name in PROBES:
            metrics[spec.key] = list(PROBES.get(spec.name).fn.metrics)
    if (recipe.eval.probes or recipe.gate) and recipe.student is None:
        key = "gate" if recipe.gate else "eval.probes"
        problems.append(Problem(key, "compares the student with the teacher and its base: add a `student:` section"))
    for i, c in enumerate(recipe.gate):
        label, _, name = c.metric.partition(".")
        if label not in metrics:
            known = ", ".join(sorted(metrics))
            problems.append(Problem(dotted(("gate", i, "metric")), f"{c.metric!r}: no probe is labelled {label!r} in eval.probes "
                                                        f"(known: {known})"))
        elif name not in metrics[label]:
            problems.append(Problem(dotted(("gate", i, "metric")), f"{c.metric!r}: {label} measures "
                                                        f"{', '.join(metrics[label])}"))
    return problems


def load_recipe(path: str | Path) -> Recipe:
    """Parse and check a recipe; raises RecipeError listing every problem found."""
    from distill.prompts import PROMPT_SOURCES, check_rows
    from distill.filters import FILTERS
    from distill.probes import PROBES
    from distill.verifiers import VERIFIERS

    path = Path(path)
    file = str(path)
    try:
        data = yaml.load(path.read_text(), Loader=RecipeLoader)
    except FileNotFoundError:
        raise RecipeError(file, [Problem("(file)", "no such file")]) from None
    except (OSError, UnicodeDecodeError) as e:  # a directory, no permission, not UTF-8 text
        raise RecipeError(file, [Problem("(file)", f"cannot read: {e}")]) from None
    except yaml.YAMLError as e:
        raise RecipeError(file, [Problem("(file)", f"not valid YAML: {yaml_error(e)}")]) from None
    if not isinstance(data, dict):
        raise RecipeError(file, [Problem("(top level)", "a recipe is a mapping of sections (name, teacher, prompts, ...)")])

    problems: list[Problem] = []
    recipe = None
    try:
        recipe = Recipe.model_validate(data, context={"base_dir": path.parent})
    except ValidationError as e:
        problems.extend(problems_from(e, Recipe))

    base_dir = path.parent
    # From the raw data: the recipe may be invalid elsewhere, and skip still applies to its rows.
    prompts_data = data.get("prompts")
    bad_rows = "skip" if isinstance(prompts_data, dict) and prompts_data.get("bad_rows") == "skip" else "fail"
    # Every row of every prompt file is read here, so a bad row is a problem `distill validate`
    # reports, not a traceback partway through `distill run`.
    checks = [
        (PROMPT_SOURCES, ("prompts", "train"), "source", PromptSource, lambda n, p: check_rows(n, p, bad_rows)),
        (PROMPT_SOURCES, ("prompts", "eval"), "source", PromptSource, lambda n, p: check_rows(n, p, bad_rows)),
        (VERIFIERS, ("verifiers",), "name", Verifier, None),
        (FILTERS, ("filters",), "name", Filter, None),
        (PROBES, ("eval", "probes"), "name", ProbeSpec, None),
    ]
    resolved_lists = []
    for registry, loc, key, base, check_data in checks:
        found, params = _check_components(data, registry, loc, key, base, base_dir, check_data)
        problems.extend(found)
        resolved_lists.append(params)

    teacher_entry = None
    teacher_ref = data.get("teacher")
    teacher_id = teacher_ref.get("id") if isinstance(teacher_ref, dict) else teacher_ref
    if isinstance(teacher_id, str):
        key = "teacher" if isinstance(teacher_ref, str) else "teacher.id"
        try:
            teacher_entry = load_teacher(teacher_id, base_dir)
            served = teacher_entry.endpoint is not None
            if served and isinstance(teacher_ref, dict) and teacher_ref.get("engine_args"):
                problems.append(Problem("teacher.engine_args", "the teacher is served over HTTP (its entry has an "
                                        "endpoint): engine arguments belong to that server, remove them here"))
            from distill.backends import BACKENDS, backend_name

            if (backend := backend_name(teacher_entry)) not in BACKENDS:
                problems.append(Problem(key, f"teacher {teacher_id!r}: backend: {BACKENDS.unknown(backend)}"))
            elif backend == "openai-http" and teacher_entry.endpoint is None:
                problems.append(Problem(key, f"teacher {teacher_id!r}: backend openai-http serves an endpoint: add "
                                             "`endpoint: {base_url: ...}` to the entry, or remove `backend`"))
        except ValidationError as e:  # before ValueError: pydantic's ValidationError is a ValueError
            details = "; ".join(f"{p.key}: {p.message}" for p in problems_from(e, Teacher))
            problems.append(Problem(key, f"teacher file {teacher_id!r} is invalid: {details}"))
        except ValueError as e:
            problems.append(Problem(key, str(e)))

    if recipe is not None:
        problems.extend(check_passthrough(recipe))
        problems.extend(check_probes_and_gate(recipe))
        if recipe.sampling.accepted_per_prompt and not any(v.required for v in recipe.verifiers):
            problems.append(Problem("sampling.accepted_per_prompt", "counts samples the verifiers accepted: "
                                    "add a required verifier, or remove it"))
        if recipe.student is not None:
            recipe._path = path
            try:
                recipe.student_base
            except ValueError as e:
                problems.append(Problem("student.base", str(e)))
        problems.extend(check_kd(recipe, teacher_entry))
        if recipe.train.method == "on-policy" and teacher_entry is not None:
            problems.extend(check_on_policy(recipe, teacher_entry))

    if problems:
        raise RecipeError(file, problems)
    assert recipe is not None
    recipe._path = path
    recipe._teacher = teacher_entry
    lists = [recipe.prompts.train, recipe.prompts.eval, recipe.verifiers, recipe.filters, recipe.eval.probes]
    for components, params in zip(lists, resolved_lists):
        for component, p in zip(components, params):
            component._params = p
    return recipe
