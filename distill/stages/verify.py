"""Verify: run the recipe's verifiers over a batch of completions; keep every verdict."""

from __future__ import annotations

from distill.verifiers import VERIFIERS, Verdict


def verify_batch(verifiers: list, completions: list[str | None], references: list[str | None]) -> list[list[dict]]:
    """One list of verdict dicts per completion; error rows (completion None) get none."""
    live = [i for i, c in enumerate(completions) if c is not None]
    out: list[list[dict]] = [[] for _ in completions]
    for spec in verifiers:
        fn = VERIFIERS.get(spec.name).fn
        verdicts: list[Verdict] = fn([completions[i] for i in live], [references[i] for i in live], spec.params)
        if len(verdicts) != len(live):
            raise RuntimeError(f"verifier {spec.name!r} returned {len(verdicts)} verdicts for {len(live)} completions")
        for i, v in zip(live, verdicts):
            score = None if v.score is None else float(v.score)
            out[i].append({"verifier": spec.name, "score": score, "reason": v.reason,
                           "required": spec.required, "passed": score is not None and score >= spec.threshold})
    return out


def accepted(verdicts: list[dict], error: str | None) -> bool:
    """Every required verifier passed. A required verdict of None (cannot verify) is not a pass."""
    if error:
        return False
    return all(v["passed"] for v in verdicts if v["required"])
