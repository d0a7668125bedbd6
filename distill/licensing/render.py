"""A licence decision as output: a JSON-able dict for lineage.json, plain text for the CLI."""

from __future__ import annotations

from typing import Any

from distill.licensing.types import Decision


def to_dict(decision: Decision) -> dict[str, Any]:
    """A JSON-able dict (for lineage.json and `--json` output)."""
    return decision.model_dump(mode="json")


def render_text(decision: Decision) -> list[str]:
    """Plain text lines for a CLI: verdict first, then what blocks, then what is owed."""
    d = decision
    use = {True: "commercial use", False: "non-commercial use", None: "use not declared"}[d.commercial]
    lines = [
        f"licence decision: {d.verdict}",
        f"student: {d.student or '(not named)'}; {use}; {'competing' if d.competing else 'not competing'} with API providers",
    ]
    if d.student_licence:
        s = d.student_licence
        extra = "".join(f", {k}: {v}" for k, v in (("license_name", s.license_name), ("license_link", s.license_link)) if v)
        lines.append(f"student licence: {s.license}{extra}  [{s.citation}]")
    if d.name_prefix:
        lines.append(f"name must begin with: {d.name_prefix!r}")
    if d.non_commercial:
        lines.append("non-commercial use only")
    if d.mau_threshold:
        lines.append(f"lowest user threshold: {d.mau_threshold:,} monthly active users")
    lines.append("sources:")
    lines += [f"  {s.label}: {s.licence} ({s.role}; {s.why})" for s in d.sources]
    for issue in d.issues:
        if issue.acknowledged:
            head = f"ACKNOWLEDGED {issue.rule}: {issue.acknowledged.reason}"
        else:
            head = f"{'REFUSED' if issue.blocking else 'CONFLICT (not blocking)'} {issue.rule}: {issue.message}"
        lines.append(head)
        if issue.acknowledged:
            lines.append(f"  overrides: {issue.message}")
        lines.append(f"  from: {', '.join(issue.sources)}")
        lines += [f"  cites: {c}" for c in issue.citations]
        if issue.blocking and not issue.acknowledged:
            lines.append("  ways out:")
            lines += [f"    - {w}" for w in issue.ways_out]
    if d.obligations:
        lines.append("obligations:")
    for o in d.obligations:
        shown = "".join([f' "{o.text}"' if o.text else "", f" <{o.url}>" if o.url else ""])
        lines.append(f"  - [{o.kind}] {o.what}{shown}")
        lines.append(f"      cites: {o.citation}; from: {', '.join(o.sources)}")
    lines += [f"warning: {w}" for w in d.warnings]
    return lines
