"""judge: an LLM grades each answer, for what the symbolic checks cannot decide.

The judge is any teacher entry (a shipped id or a teacher YAML), served by the same backends
as the teacher. Its prompt is a Jinja template file with `question`, `answer` and `reference`
(None when the prompt has none); the shipped one (templates/judge.jinja) asks for a final line
"VERDICT: CORRECT" or "VERDICT: INCORRECT". The verdict is read with `pattern`, whose first
group is looked up in `labels` (case-insensitive); the last match in the judge's text wins, so
a judge that changes its mind while reasoning is read at its conclusion.

Score: the label's value. None when the judge's text has no verdict, the judge request failed,
or the judge's generation was cut off before a verdict. The judge samples greedily (temperature
0) with a fixed seed, so a rerun grades the same way.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator

from distill.registry import Params
from distill.verifiers import VERIFIERS, Verdict, VerifyContext

DEFAULT_TEMPLATE = Path(__file__).parent / "templates" / "judge.jinja"


class JudgeParams(Params):
    model: str = Field(min_length=1, description="a teacher id (distill ls) or a teacher YAML: the judge")
    template: str | None = None  # a Jinja file, relative to the recipe; None: templates/judge.jinja
    pattern: str = r"VERDICT:\s*\**\s*(CORRECT|INCORRECT)"
    labels: dict[str, float] = {"correct": 1.0, "incorrect": 0.0}
    max_tokens: int = Field(512, ge=1)  # room to reason briefly before the verdict line
    _base_dir: Path = PrivateAttr(default=Path("."))

    @field_validator("template")
    @classmethod
    def _template_exists(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and not (Path((info.context or {}).get("base_dir", ".")) / v).is_file():
            raise ValueError("template file not found (paths are relative to the recipe file)")
        return v

    @field_validator("pattern")
    @classmethod
    def _one_group(cls, v: str) -> str:
        try:
            groups = re.compile(v).groups
        except re.error as e:
            raise ValueError(f"not a regular expression: {e}") from None
        if groups < 1:
            raise ValueError("the pattern needs a group that captures the label, e.g. VERDICT: (CORRECT|INCORRECT)")
        return v

    @field_validator("labels")
    @classmethod
    def _scores(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: s for k, s in v.items() if not 0 <= s <= 1}
        if bad or not v:
            raise ValueError(f"labels map each verdict word to a score in [0, 1]; got {v}")
        return {k.lower(): s for k, s in v.items()}

    def model_post_init(self, context: Any) -> None:
        self._base_dir = Path((context or {}).get("base_dir", "."))

    @property
    def template_path(self) -> Path:
        return self._base_dir / self.template if self.template else DEFAULT_TEMPLATE


@lru_cache(maxsize=8)
def _template(path: str):
    import jinja2

    return jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True).from_string(
        Path(path).read_text())


def judge_prompt(params: JudgeParams, question: str | None, answer: str, reference: str | None) -> str:
    return _template(str(params.template_path)).render(question=question or "", answer=answer, reference=reference)


def read_verdict(text: str | None, params: JudgeParams) -> Verdict:
    if not text:
        return Verdict(None, "the judge returned no text")
    matches = list(re.finditer(params.pattern, text, re.IGNORECASE))
    if not matches:
        return Verdict(None, f"no verdict in the judge's answer: {text.strip()[-60:]!r}")
    label = matches[-1].group(1).strip().lower()
    if label not in params.labels:
        return Verdict(None, f"the judge's verdict {label!r} is not one of {', '.join(params.labels)}")
    return Verdict(params.labels[label], f"judge {params.model}: {label}")


@VERIFIERS.register("judge", params=JudgeParams, uses_model=True, example="""
verifiers:
  - name: judge
    model: qwen2.5-72b-instruct   # any teacher entry
    # template: judge.jinja       # your own prompt (question, answer, reference); default: the shipped one
    required: true
""")
def verify_with_judge(completions: list[str], references: list[str | None], params: JudgeParams,
                      ctx: VerifyContext) -> list[Verdict]:
    """An LLM (any teacher entry) grades each answer against the question and reference, via a template."""
    if not completions:
        return []
    if ctx.backend_for is None:
        raise RuntimeError("the judge verifier needs a model backend; it runs inside `distill run`")
    requests = [{
        "work_id": str(i),
        "messages": [{"role": "user", "content": judge_prompt(params, q, c, r)}],
        "sampling_params": {"temperature": 0.0, "top_p": 1.0, "max_tokens": params.max_tokens, "seed": 0},
    } for i, (c, r, q) in enumerate(zip(completions, references, ctx.questions, strict=True))]
    results: dict[int, dict] = {}
    for batch in ctx.backend_for(params.model).generate(requests):
        for row in batch:
            results[int(row["work_id"])] = row
    out = []
    for i in range(len(completions)):
        row = results.get(i)
        if row is None or row.get("error"):
            out.append(Verdict(None, f"judge request failed: {(row or {}).get('error') or 'no result'}"))
        else:
            out.append(read_verdict(row["text"], params))
    return out
