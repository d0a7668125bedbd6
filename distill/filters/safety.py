"""safety: flags harmful completions and refusals, by a transparent rule list and optionally a guard model.

Rules (safety.yaml beside this module, or `rules_file`): per category a list of regular
expressions, matched case-insensitively against the completion (and the prompt with `on: both`).
They need no model and say exactly why a row was flagged; they are keyword heuristics, so they
miss paraphrases and can flag a text that discusses a harm to prevent it. `refusal` is a
category of its own: a student should not learn to refuse answerable prompts.

Guard model (`guard`: any teacher entry, e.g. a Llama Guard model on a GPU): served by the
same backends as the teacher, greedily. With `guard_template: null` the conversation (prompt as
the user turn, completion as the assistant turn) is sent as chat, and the guard's own chat
template builds its moderation prompt, as Llama Guard's does. With a template file (the shipped
templates/guard.jinja by default; variables `prompt`, `completion`) the rendered text is one user
turn, for a general instruct model used as a guard. The answer is read as Llama Guard writes it:
"safe", or "unsafe" followed by the category on the next line. An answer that is neither counts
as `on_unclear` says.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from distill.filters import FILTERS, FilterContext, FilterVerdict
from distill.registry import Params

HERE = Path(__file__).parent
DEFAULT_GUARD_TEMPLATE = "templates/guard.jinja"


class SafetyParams(Params):
    on: Literal["completion", "both"] = "completion"  # what the student learns to write
    rules_file: str | None = None  # a YAML of the shape of safety.yaml, recipe-relative; None: the shipped rules
    categories: list[str] | None = None  # rule categories to apply; None: all in the file
    guard: str | None = None  # a teacher id or YAML serving as the guard model; None: rules only
    # A Jinja file (recipe-relative) rendered as one user turn; null: send the conversation as chat.
    guard_template: str | None = DEFAULT_GUARD_TEMPLATE
    guard_max_tokens: int = Field(32, ge=1)  # a verdict and a category fit in a few tokens
    on_unclear: Literal["flag", "pass"] = "flag"  # a guard answer that is neither safe nor unsafe
    _base_dir: Path = PrivateAttr(default=Path("."))

    @field_validator("rules_file")
    @classmethod
    def _rules_exist(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None:
            path = Path((info.context or {}).get("base_dir", ".")) / v
            if not path.is_file():
                raise ValueError(f"rules file not found (looked for {path}; paths are relative to the recipe file)")
            load_rules(str(path))  # its errors, now rather than after sampling
        return v

    @field_validator("guard_template")
    @classmethod
    def _template_exists(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and v != DEFAULT_GUARD_TEMPLATE:
            if not (Path((info.context or {}).get("base_dir", ".")) / v).is_file():
                raise ValueError("guard template not found (paths are relative to the recipe file)")
        return v

    @model_validator(mode="after")
    def _known_categories(self, info: ValidationInfo):
        self._base_dir = Path((info.context or {}).get("base_dir", "."))
        if self.categories is not None:
            known = set(load_rules(str(self.rules_path)))
            unknown = [c for c in self.categories if c not in known]
            if unknown:
                raise ValueError(f"unknown rule categories {unknown}; the rules file has: {', '.join(sorted(known))}")
        return self

    @property
    def rules_path(self) -> Path:
        return self._base_dir / self.rules_file if self.rules_file else HERE / "safety.yaml"

    @property
    def template_path(self) -> Path | None:
        if self.guard_template is None:
            return None
        return HERE / self.guard_template if self.guard_template == DEFAULT_GUARD_TEMPLATE else self._base_dir / self.guard_template


@lru_cache(maxsize=8)
def load_rules(path: str) -> dict[str, list[re.Pattern]]:
    """category -> compiled patterns; a malformed file or pattern is an error naming it."""
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a mapping of category -> {{patterns: [...]}}")
    rules = {}
    for category, spec in data.items():
        patterns = spec.get("patterns") if isinstance(spec, dict) else None
        if not isinstance(patterns, list) or not patterns:
            raise ValueError(f"{path}: {category}: needs a non-empty `patterns` list")
        compiled = []
        for i, rx in enumerate(patterns):
            try:
                compiled.append(re.compile(rx, re.IGNORECASE))
            except re.error as e:
                raise ValueError(f"{path}: {category}.patterns[{i}]: not a regular expression: {e}") from None
        rules[str(category)] = compiled
    return rules


def rule_hit(text: str, rules: dict[str, list[re.Pattern]]) -> tuple[str, str] | None:
    """(category, matched text) of the first rule that matches, or None."""
    for category, patterns in rules.items():
        for rx in patterns:
            if m := rx.search(text):
                return category, m.group(0)
    return None


def read_guard(text: str | None) -> tuple[bool | None, str]:
    """(unsafe?, category) from a Llama-Guard-style answer; None when it says neither."""
    lines = [x.strip() for x in (text or "").strip().splitlines() if x.strip()]
    if not lines:
        return None, ""
    first = lines[0].lower().strip(" .:*")
    if first.startswith("unsafe"):
        rest = first[len("unsafe"):].strip(" :,-")
        return True, (lines[1] if len(lines) > 1 else rest) or "unsafe"
    if first.startswith("safe"):
        return False, ""
    return None, ""


def _guard_requests(rows: list[dict], p: SafetyParams) -> list[dict]:
    template = None
    if (path := p.template_path) is not None:
        import jinja2

        template = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(path.read_text())
    out = []
    for i, r in enumerate(rows):
        if template is None:
            messages = [{"role": "user", "content": r["prompt_text"]}, {"role": "assistant", "content": r["completion"]}]
        else:
            messages = [{"role": "user", "content": template.render(prompt=r["prompt_text"], completion=r["completion"])}]
        out.append({"work_id": str(i), "messages": messages,
                    "sampling_params": {"temperature": 0.0, "top_p": 1.0, "max_tokens": p.guard_max_tokens, "seed": 0}})
    return out


@FILTERS.register("safety", params=SafetyParams, example="""
filters:
  - name: safety
    mode: drop
    categories: [refusal, weapons, malware, self_harm, child_safety]
    # guard: llama-guard-3-8b.yaml   # a teacher entry; on a GPU
    # guard_template: null           # Llama Guard builds its own prompt from the chat
""")
def filter_safety(rows: list[dict], params: SafetyParams, ctx: FilterContext) -> list[FilterVerdict]:
    """Harmful completions and refusals: a transparent rule list, plus a guard model if one is named."""
    rules = load_rules(str(params.rules_path))
    if params.categories is not None:
        rules = {c: rules[c] for c in params.categories}
    verdicts: list[FilterVerdict | None] = []
    for r in rows:
        text = r["completion"] if params.on == "completion" else f"{r['prompt_text']}\n{r['completion']}"
        hit = rule_hit(text or "", rules)
        verdicts.append(FilterVerdict(True, f"rule {hit[0]}: {hit[1][:60]!r}", hit[0]) if hit else None)
    if params.guard is not None:
        todo = [i for i, v in enumerate(verdicts) if v is None]  # rows the rules already flagged need no model
        if todo:
            if ctx.backend_for is None:
                raise RuntimeError("the safety filter's guard model needs a backend; it runs inside `distill run`")
            answers: dict[int, dict] = {}
            if ctx.progress:
                ctx.progress.start(total=len(todo))
            for batch in ctx.backend_for(params.guard).generate(_guard_requests([rows[i] for i in todo], params)):
                for a in batch:
                    answers[todo[int(a["work_id"])]] = a
                if ctx.progress:
                    ctx.progress.advance(len(batch))
            for i in todo:
                a = answers.get(i)
                unsafe, category = read_guard(None if a is None or a.get("error") else a["text"])
                if unsafe:
                    verdicts[i] = FilterVerdict(True, f"guard {params.guard}: unsafe ({category})", f"guard:{category}")
                elif unsafe is None and params.on_unclear == "flag":
                    said = (a or {}).get("error") or repr(((a or {}).get("text") or "")[:40])
                    verdicts[i] = FilterVerdict(True, f"guard {params.guard} gave no verdict: {said}", "guard:unclear")
                else:
                    verdicts[i] = FilterVerdict(False, f"guard {params.guard}: safe" if unsafe is False else
                                                f"guard {params.guard} gave no verdict (passed: on_unclear)")
    return [v or FilterVerdict(False) for v in verdicts]
