"""The promotion gate: the recipe's `gate:` conditions checked against eval.json's numbers.

A condition compares one metric of the student with the teacher's or the base model's value
(min_ratio, max_drop, max_rise) or with a fixed bound (at_least, at_most). The student is
promoted when every condition holds; a metric that was not measured (a probe skipped for want
of its data, a model that did not answer) fails its condition, saying so: a gate that cannot
check something does not wave it through.
"""

from __future__ import annotations

PROMOTED, HELD = "promoted", "held"


def value(result: dict, metric: str, role: str) -> float | None:
    """A model's value of `task.<score>` or `<probe label>.<metric>` in eval.json."""
    label, _, name = metric.partition(".")
    if label == "task":
        return (result.get(role) or {}).get(name)
    probe = (result.get("probes") or {}).get(label) or {}
    return (((probe.get("metrics") or {}).get(name) or {}).get(role) or {}).get("value")


def check(condition: dict, result: dict) -> dict:
    """One condition's verdict: the numbers, whether it holds and a sentence saying so."""
    metric, vs = condition["metric"], condition.get("vs")
    student = value(result, metric, "student")
    other = value(result, metric, vs) if vs else None
    out = {"metric": metric, "vs": vs, "student": student, "other": other, "rule": rule(condition)}
    if student is None or (vs and other is None):
        missing = "the student's" if student is None else f"the {vs}'s"
        return {**out, "bound": None, "passed": False, "message": f"{metric}: {missing} value was not measured"}
    if condition.get("min_ratio") is not None:
        bound = condition["min_ratio"] * other
        ok = student >= bound
        said = f"student {student:.3f} {'>=' if ok else '<'} {condition['min_ratio']:g} x {vs} {other:.3f} = {bound:.3f}"
    elif condition.get("max_drop") is not None:
        bound = other - condition["max_drop"]
        ok = student >= bound - 1e-12
        said = f"student {student:.3f} {'>=' if ok else '<'} {vs} {other:.3f} - {condition['max_drop']:g} = {bound:.3f}"
    elif condition.get("max_rise") is not None:
        bound = other + condition["max_rise"]
        ok = student <= bound + 1e-12
        said = f"student {student:.3f} {'<=' if ok else '>'} {vs} {other:.3f} + {condition['max_rise']:g} = {bound:.3f}"
    elif condition.get("at_least") is not None:
        bound = condition["at_least"]
        ok = student >= bound
        said = f"student {student:.3f} {'>=' if ok else '<'} {bound:g}"
    else:
        bound = condition["at_most"]
        ok = student <= bound
        said = f"student {student:.3f} {'<=' if ok else '>'} {bound:g}"
    return {**out, "bound": bound, "passed": bool(ok), "message": f"{metric}: {said}"}


def rule(condition: dict) -> str:
    """The condition as written: `task.pass@1 >= 0.95 x teacher`."""
    m, vs = condition["metric"], condition.get("vs")
    if condition.get("min_ratio") is not None:
        return f"{m} >= {condition['min_ratio']:g} x {vs}"
    if condition.get("max_drop") is not None:
        return f"{m} >= {vs} - {condition['max_drop']:g}"
    if condition.get("max_rise") is not None:
        return f"{m} <= {vs} + {condition['max_rise']:g}"
    if condition.get("at_least") is not None:
        return f"{m} >= {condition['at_least']:g}"
    return f"{m} <= {condition['at_most']:g}"


def decide(conditions: list[dict], result: dict) -> dict | None:
    """eval.json's `gate`: the decision and every condition's verdict; None without conditions."""
    if not conditions:
        return None
    checked = [check(c, result) for c in conditions]
    failed = [c for c in checked if not c["passed"]]
    return {"decision": HELD if failed else PROMOTED, "conditions": checked,
            "failed": [c["message"] for c in failed]}


def summary_text(gate: dict) -> str:
    """A few lines for the terminal and CI logs."""
    lines = [f"gate: {gate['decision'].upper()}"]
    for c in gate["conditions"]:
        lines.append(f"  {'pass' if c['passed'] else 'FAIL'}  {c['rule']}: {c['message'].partition(': ')[2]}")
    return "\n".join(lines)
