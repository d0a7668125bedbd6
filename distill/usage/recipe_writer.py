"""The recipe a usage plan writes for one chosen cluster: the cluster's calls as prompt files,
a teacher (the logged answers replayed, or a model that relabels the calls), the verifier that
fits the task against the logged answers, and a student base that fits it. A plain mapping, dumped as YAML under a header that says what it is."""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass

import yaml

from distill.usage.catalogues import base_named

# Tokens a sample may take, by task: a call or a label is short, a JSON object or a sentence longer.
MAX_TOKENS = {"tool call": 128, "classification": 32, "extraction": 256, "free text": 256}
CONSTRAINED_SHARE = 0.5  # a small teacher rarely writes a well-formed call unaided (recipes/agent/)


@dataclass
class PromptFile:
    split: str  # train | eval
    path: str  # relative to the recipe
    licence: str  # the logged model's terms: the file holds its answers


@dataclass
class Draft:
    cluster: str
    task_type: str
    teacher: str
    student_base: str
    student_name: str
    verifier: dict
    files: list[PromptFile]
    with_tools: bool
    header: list[str]
    replayed: bool = False  # the teacher replays the logged answers: one answer per call, nothing to sample
    train_rows: int = 0  # training calls in train.jsonl


# A small base learns a cluster's format and labels from a few dozen calls only over several passes:
# enough for about this many updates of UPDATE_ROWS calls each, within MAX_EPOCHS passes.
MIN_UPDATES, UPDATE_ROWS, MAX_EPOCHS = 32, 4, 8


def epochs_for(rows: int) -> int:
    """Passes over `rows` training calls that give a small base about MIN_UPDATES updates."""
    per_epoch = max(1, math.ceil(rows / UPDATE_ROWS))
    return max(1, min(MAX_EPOCHS, math.ceil(MIN_UPDATES / per_epoch)))


def _source(f: PromptFile, with_tools: bool, task_type: str) -> dict:
    source = {"source": "jsonl", "path": f.path, "messages_field": "messages", "answer_field": "reference",
              "licence": f.licence}
    if with_tools:
        source["tools_field"] = "tools"
    if task_type in ("tool call", "classification"):
        source["category_field"] = "category"  # scores per tool, or per label
    return source


def recipe(d: Draft) -> dict:
    tools = d.task_type == "tool call"
    teacher_base, student_base = base_named(d.teacher), base_named(d.student_base)
    teacher: dict = {"id": d.teacher}
    if tools and teacher_base and teacher_base.template:
        teacher["template"] = teacher_base.template
    # Batches of 16 results: a held-out set of a few dozen calls then spans several, and a model's
    # seconds per answer can be measured after its first (convert prices small models from it).
    sampling = {"n": 1 if d.replayed else 4, "temperature": 0.8, "top_p": 0.95, "max_tokens": MAX_TOKENS[d.task_type],
                "seed": 0, "batch_size": 16}
    if tools and teacher_base and teacher_base.tools == "hermes" and not d.replayed:
        sampling["constrained_calls"] = CONSTRAINED_SHARE
    student: dict = {"name": d.student_name, "base": d.student_base}
    if tools and student_base and student_base.template:
        student["template"] = student_base.template
    small = student_base is not None and student_base.params_b < 0.5
    # Rows longer than max_length are cut from the end, which would lose the answer: a tool call's
    # prompt carries the tools' schemas (often over a thousand tokens). Each update sees UPDATE_ROWS
    # calls, unpacked; tool calls one at a time (accumulated), as a batch of long rows' logits over
    # the whole vocabulary would take gigabytes.
    if small:
        train = {"method": "full", "epochs": epochs_for(d.train_rows * sampling["n"]), "learning_rate": 0.0002,
                 "batch_size": 1 if tools else UPDATE_ROWS, "gradient_accumulation_steps": UPDATE_ROWS if tools else 1,
                 "packing": False, "max_length": 4096 if tools else 1024, "gradient_checkpointing": False}
    else:
        train = {"method": "full", "epochs": 2, "learning_rate": 0.00001, "batch_size": 8, "max_length": 4096}
    return {
        "name": f"usage-{d.cluster}",
        "teacher": teacher,
        "prompts": {"train": [_source(f, d.with_tools, d.task_type) for f in d.files if f.split == "train"],
                    "eval": [_source(f, d.with_tools, d.task_type) for f in d.files if f.split == "eval"]},
        "sampling": sampling,
        "verifiers": [d.verifier],
        "filters": [{"name": "exact-dedup"}],
        "student": student,
        "train": train,
        # A replayed teacher gives one answer per call: one sampled answer and the greedy one are enough.
        "eval": {"k": 1 if d.replayed else 2},
    }


def render(d: Draft) -> str:
    body = yaml.safe_dump(recipe(d), sort_keys=False, allow_unicode=True, width=100)
    lines = [w for line in d.header for w in textwrap.wrap(line, 96, subsequent_indent="  ")]
    return "".join(f"# {line}\n" for line in lines) + body
