import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from pydantic import ValidationError

from support.progress import CountingBar
from distill.filters import FILTERS, FilterContext
from distill.filters.decontaminate import DecontaminateParams, QuestionIndex, decontaminate, read_questions
from distill.recipe import RecipeLoader

# Two small "benchmarks" and the recipe's eval prompts, in the style of grade-school and
# competition maths. Written for these tests.
GRADE = [
    "Maria baked 24 cookies for the school fair. She sold 3 cookies to each of her 5 friends and gave "
    "4 to her teacher. How many cookies does Maria have left?",
    "A train leaves the station at 9 am travelling at 60 miles per hour. A second train leaves the same "
    "station two hours later at 80 miles per hour. At what time does the second train catch up with the first?",
    "Tom has twice as many marbles as Jake, and Jake has 7 more marbles than Lucy. If Lucy has 12 marbles, "
    "how many marbles do the three children have together?",
]
COMPETITION = [
    "Find the number of ordered pairs of positive integers (a, b) such that a + b = 30 and the greatest "
    "common divisor of a and b is 5.",
    "A rectangular garden is 18 meters long and 11 meters wide. A path 1 meter wide runs around the outside "
    "of the garden. What is the area of the path in square meters?",
    "Define entropy.",  # shorter than n words: found only whole
]
EVAL = [
    {"prompt_id": "e1", "question": "A shop sells pencils in packs of 12 and erasers in packs of 5. Priya buys "
     "4 packs of pencils and 3 packs of erasers for her class. How many items does Priya buy?"},
]

# (prompt, benchmark it contaminates or None): verbatim, inside a longer prompt, lightly reworded
# (a changed name, a changed number, a reordered clause), and unrelated prompts of the same kind.
PLANTED = [
    (GRADE[0], "grade"),
    (f"Solve the following problem step by step.\n\n{GRADE[1]}\n\nPut the final answer in a box.", "grade"),
    (GRADE[0].replace("Maria", "Elena"), "grade"),  # changed name (twice)
    (GRADE[2].replace("Lucy", "Anna"), "grade"),  # changed name (twice)
    (GRADE[1].replace("60 miles", "50 miles"), "grade"),  # changed number
    (GRADE[2].replace("12 marbles", "15 marbles"), "grade"),  # changed number
    ("Jake has 7 more marbles than Lucy, and Tom has twice as many marbles as Jake. If Lucy has 12 marbles, "
     "how many marbles do the three children have together?", "grade"),  # reordered clause
    ("She sold 3 cookies to each of her 5 friends and gave 4 to her teacher. Maria baked 24 cookies for the "
     "school fair. How many cookies does Maria have left?", "grade"),  # reordered sentence
    (COMPETITION[0].replace("30", "42"), "competition"),  # changed number
    ("A path 1 meter wide runs around the outside of a rectangular garden. The garden is 18 meters long and "
     "11 meters wide. What is the area of the path in square meters?", "competition"),  # reordered clause
    ("Please define entropy, in one sentence.", "competition"),  # the short question, whole
    (EVAL[0]["question"].replace("Priya", "Omar"), "eval"),
    ("Lucy baked 36 muffins for the bake sale. She sold 12 muffins in the morning and half of the rest in "
     "the afternoon. How many muffins does Lucy have left?", None),
    ("A bus leaves the depot at 7 am travelling at 40 miles per hour. How far has it gone by 10 am?", None),
    ("Anna has three times as many stickers as Ben. If Ben has 8 stickers, how many stickers do they have "
     "together?", None),
    ("A square garden has sides of 9 meters. What is the area of the garden in square meters?", None),
    ("Find the number of positive divisors of 360.", None),
    ("What is entropy in thermodynamics, and how does it differ from information entropy?", None),
    ("Write a short poem about the sea at night.", None),
    ("", None),
]


def rows_of(prompts: list[str], completions: list[str] | None = None) -> list[dict]:
    completions = completions or [""] * len(prompts)
    return [{"sample_id": f"s{i}", "prompt_id": f"p{i}", "prompt_text": p, "completion": c, "finish_reason": "stop",
             "completion_tokens": 1, "prompt_source": "test"} for i, (p, c) in enumerate(zip(prompts, completions))]


@pytest.fixture
def bench_dir(tmp_path):
    (tmp_path / "bench").mkdir()
    lines = [json.dumps({"question": q, "answer": "1"}) + "\n" for q in GRADE]
    (tmp_path / "bench" / "grade.jsonl").write_text("".join(lines))
    pq.write_table(pa.table({"problem": COMPETITION}), tmp_path / "bench" / "competition.parquet")
    return tmp_path


def params(base_dir, **kw) -> DecontaminateParams:
    spec = {"benchmarks": [{"name": "grade", "path": "bench/grade.jsonl"},
                           {"name": "competition", "path": "bench/competition.parquet", "field": "problem"}], **kw}
    return DecontaminateParams.model_validate(spec, context={"base_dir": base_dir})


def run(rows, p, base_dir, eval_prompts=EVAL):
    return decontaminate(rows, p, FilterContext(base_dir=base_dir, eval_prompts=eval_prompts))


@pytest.mark.parametrize("prompt, expected", PLANTED)
def test_planted_question_is_caught_and_unrelated_is_not(bench_dir, prompt, expected):
    [v] = run(rows_of([prompt]), params(bench_dir), bench_dir)
    assert v.flagged == (expected is not None), v.reason
    assert v.category == (expected or "")


def test_hits_are_counted_per_benchmark(bench_dir):
    verdicts = run(rows_of([p for p, _ in PLANTED]), params(bench_dir), bench_dir)
    assert Counter(v.category for v in verdicts if v.flagged) == Counter(b for _, b in PLANTED if b)
    assert [v.flagged for v in verdicts] == [b is not None for _, b in PLANTED]  # in row order


@pytest.mark.parametrize(
    "prompt, reason",
    [
        (GRADE[0], 'grade question "Maria baked 24 cookies for the school fair. She sold 3…" (overlap 1.00)'),
        (GRADE[1].replace("60 miles", "50 miles"),
         'grade question "A train leaves the station at 9 am travelling at 60 miles…" (overlap 0.86)'),
        ("Define entropy!", 'competition question "Define entropy." (whole question)'),
        (EVAL[0]["question"],
         'eval question "A shop sells pencils in packs of 12 and erasers in packs of…" (overlap 1.00)'),
    ],
)
def test_reason_names_benchmark_question_and_overlap(bench_dir, prompt, reason):
    [v] = run(rows_of([prompt]), params(bench_dir), bench_dir)
    assert v.reason == reason


@pytest.mark.parametrize(
    "prompt, completion, kw, flagged",
    [
        (GRADE[0], "", {}, True),
        ("Solve it.", GRADE[0], {}, False),  # the prompt is checked by default
        ("Solve it.", GRADE[0], {"on": "completion"}, True),
        ("Solve it.", GRADE[0], {"on": "both"}, True),
        (GRADE[0], "", {"on": "completion"}, False),
        # Half the question in the prompt, the other half in the completion: together it is there.
        (GRADE[0][:75], GRADE[0][75:], {"on": "both"}, True),
        (GRADE[0][:75], GRADE[0][75:], {"on": "prompt"}, False),
        # All three rewordings at once keep under half of the 5-grams; a lower bar finds them.
        ("Jake has 9 more marbles than Anna, and Sam has twice as many marbles as Jake. If Anna has 12 "
         "marbles, how many marbles do the three children have together?", "", {}, False),
        ("Jake has 9 more marbles than Anna, and Sam has twice as many marbles as Jake. If Anna has 12 "
         "marbles, how many marbles do the three children have together?", "", {"min_overlap": 0.35}, True),
        # Longer n-grams are stricter: a reordered clause no longer reaches half.
        (PLANTED[6][0], "", {"n": 8}, False),
        (EVAL[0]["question"], "", {"include_eval": False}, False),
    ],
)
def test_params(bench_dir, prompt, completion, kw, flagged):
    [v] = run(rows_of([prompt], [completion]), params(bench_dir, **kw), bench_dir)
    assert v.flagged == flagged, v.reason


def test_template_text_is_not_evidence():
    # Generated eval questions share a template and an instruction; a training question of the
    # same template with another name and other numbers is a different question, not a copy.
    template = ("{name} has {a} apples and finds {b} more. How many apples does {name} have now? Think step by "
                "step, then give the final answer as a single number on the last line, after 'Answer:'.")
    names = ["Ana", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jun"]
    eval_prompts = [{"question": template.format(name=n, a=i + 2, b=2 * i + 5)} for i, n in enumerate(names)]
    same_template = template.format(name="Kofi", a=40, b=33)
    copy = eval_prompts[3]["question"]
    p = DecontaminateParams()
    flagged = [v.flagged for v in run(rows_of([same_template, copy]), p, ".", eval_prompts)]
    assert flagged == [False, True]
    [v] = run(rows_of([same_template]), DecontaminateParams(common_share=1.0), ".", eval_prompts)
    assert v.flagged


def test_index_overlap_is_a_share_of_the_question_ngrams():
    index = QuestionIndex.build([("b", "one two three four five six"), ("b", "alpha beta")], n=5)
    assert index.size.tolist() == [2, 1]
    who, qid, share = index.overlaps(["zero one two three four five", "say alpha beta now", "beta alpha"],
                                     np.arange(3), n=5)
    assert list(zip(who.tolist(), qid.tolist(), share.tolist())) == [(0, 0, 0.5), (1, 1, 1.0)]


def test_progress_is_reported(bench_dir):
    bar = CountingBar()
    decontaminate(rows_of(["a"] * 5000), params(bench_dir), FilterContext(base_dir=bench_dir, progress=bar))
    assert bar.total == bar.done == 5000


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"benchmarks": [{"name": "x", "path": "bench/missing.jsonl"}]}, "file not found (looked for"),
        ({"benchmarks": [{"name": "x", "path": "bench/grade.txt"}]}, "cannot tell the format of 'bench/grade.txt'"),
        ({"benchmarks": [{"name": "eval", "path": "bench/grade.jsonl"}]}, "benchmark name(s) 'eval' used twice"),
        ({"benchmarks": [{"name": "g", "path": "bench/grade.jsonl"}] * 2}, "benchmark name(s) 'g' used twice"),
        ({"include_eval": False}, "nothing to check against"),
        ({"min_overlap": 0}, "greater than 0"),
        ({"n": 0}, "greater than or equal to 1"),
        ({"benchmark": []}, "Extra inputs are not permitted"),
        ({"benchmarks": [{"name": "x"}]}, "give a benchmark either path: (a file of questions) or shipped: bfcl"),
        ({"benchmarks": [{"name": "x", "path": "bench/grade.jsonl", "shipped": "bfcl"}]}, "either path:"),
        ({"benchmarks": [{"name": "x", "path": "bench/grade.jsonl", "fields": "q"}]}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_params(bench_dir, spec, message):
    (bench_dir / "bench" / "grade.txt").write_text("x")
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DecontaminateParams.model_validate(spec, context={"base_dir": bench_dir})


def test_explicit_format_and_json_array(bench_dir):
    (bench_dir / "bench" / "grade.txt").write_text(json.dumps([{"q": q} for q in GRADE]))
    p = DecontaminateParams.model_validate(
        {"benchmarks": [{"name": "g", "path": "bench/grade.txt", "field": "q", "format": "json"}]},
        context={"base_dir": bench_dir})
    assert read_questions(p.benchmarks[0], bench_dir) == GRADE


def test_missing_field_says_which_fields_exist(bench_dir):
    spec = {"benchmarks": [{"name": "g", "path": "bench/grade.jsonl", "field": "problem"}]}
    p = DecontaminateParams.model_validate(spec, context={"base_dir": bench_dir})
    with pytest.raises(ValueError, match="row 0 has no field 'problem' \\(fields: question, answer\\)"):
        read_questions(p.benchmarks[0], bench_dir)


def test_no_questions_flags_nothing():
    assert [v.flagged for v in run(rows_of(["anything"]), DecontaminateParams(), ".", [])] == [False]


def test_registered():
    entry = FILTERS.get("decontaminate")
    assert entry.fn is decontaminate and entry.params is DecontaminateParams
    assert entry.summary and "\n" not in entry.summary
    [spec] = yaml.load(entry.example, Loader=RecipeLoader)["filters"]
    assert spec.pop("name") == "decontaminate" and spec.pop("mode") == "drop"
    DecontaminateParams(**spec)


def test_bfcl_shipped_as_a_benchmark_catches_its_requests_reworded():
    from distill.prompts import bfcl

    try:
        bfcl.data_dir()
    except ValueError:
        pytest.skip("needs the bfcl-eval package (scripts/install.sh installs it)")
    p = DecontaminateParams.model_validate({"benchmarks": [{"name": "bfcl", "shipped": "bfcl"}], "include_eval": False})
    request = bfcl.tests("simple_python")[0]["question"][0][-1]["content"]
    reworded = "Hey assistant, " + request.replace("Find", "Please compute") + " Thanks!"
    got = run(rows_of([request, reworded, "Book a table for two at Luigi's tonight at eight."]), p, ".")
    assert [v.flagged for v in got] == [True, True, False]
    assert got[0].category == "bfcl"
