import json
from types import SimpleNamespace
import re
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distill.prompts import PROMPT_SOURCES, load_prompts, prompt_id
from distill.recipe import RecipeError, load_recipe
from distill.run import RunDir
from distill.stages.prompts import build_prompts

ROWS = [
    {"problem": "What is 2 + 3?", "solution": "5", "other": "x"},
    {"problem": "What is 7 - 4?", "solution": "3", "other": "y"},
    {"problem": "What is 6 times 7?", "solution": "42", "other": "z"},
]


def recipe_with(tmp_path: Path, train: str, eval: str = ""):
    """A recipe whose prompts.train (and eval) are the given YAML list items."""
    text = "name: prompts-test\nteacher: smollm2-135m-instruct\nprompts:\n  train:\n" + textwrap.indent(textwrap.dedent(train), "    ")
    if eval:
        text += "  eval:\n" + textwrap.indent(textwrap.dedent(eval), "    ")
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return load_recipe(path)


def train_prompts(tmp_path: Path, train: str) -> list[dict]:
    recipe = recipe_with(tmp_path, train)
    return load_prompts(recipe.prompts.train, "train")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_jsonl_fields_licence_and_limit(tmp_path):
    write_jsonl(tmp_path / "data" / "q.jsonl", ROWS)
    rows = train_prompts(tmp_path, """\
        - source: jsonl
          path: data/q.jsonl
          question_field: problem
          answer_field: solution
          licence: cc-by-4.0
          limit: 2
    """)
    assert [(r["question"], r["reference"]) for r in rows] == [("What is 2 + 3?", "5"), ("What is 7 - 4?", "3")]
    for r in rows:
        assert r["prompt_id"] == prompt_id(r["question"])
        assert r["split"] == "train"
        assert r["source"] == "jsonl:data/q.jsonl"
        assert r["source_licence"] == "cc-by-4.0"


def test_jsonl_without_answer_field_has_no_reference(tmp_path):
    write_jsonl(tmp_path / "q.jsonl", ROWS)
    rows = train_prompts(tmp_path, "- {source: jsonl, path: q.jsonl, question_field: problem, licence: mit}\n")
    assert len(rows) == 3
    assert all(r["reference"] is None for r in rows)


def test_structured_answers_stay_json(tmp_path):
    spec = {"tools": [{"name": "get_weather", "parameters": {"type": "object"}}],
            "expected": [{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}]}
    write_jsonl(tmp_path / "q.jsonl", [{"q": "Weather in Paris?", "a": spec}, {"q": "Seven?", "a": 7}])
    rows = train_prompts(tmp_path, "- {source: jsonl, path: q.jsonl, question_field: q, answer_field: a, licence: mit}\n")
    assert json.loads(rows[0]["reference"]) == spec  # JSON a verifier can parse, not a Python repr
    assert rows[1]["reference"] == "7"


def problems(tmp_path: Path, train: str, eval: str = "") -> list[tuple[str, str]]:
    """The (key, message) of every problem loading the recipe reports."""
    with pytest.raises(RecipeError) as info:
        recipe_with(tmp_path, train, eval)
    return [(p.key, p.message) for p in info.value.problems]


def test_every_bad_jsonl_row_is_a_recipe_problem(tmp_path):
    lines = [
        json.dumps({"q": "What is 1 + 1?", "a": "2"}),
        "{not json",
        json.dumps("What is 2 + 2?"),
        json.dumps({"prompt": "What is 3 + 3?", "a": "6"}),
        "",  # blank lines are skipped, not bad
        json.dumps({"q": 7, "a": "7"}),
        json.dumps({"q": "  ", "a": "0"}),
        json.dumps({"q": "What is 4 + 4?"}),
        json.dumps({"q": None, "a": "x"}),
    ]
    (tmp_path / "q.jsonl").write_text("\n".join(lines) + "\n")
    found = problems(tmp_path, "- {source: jsonl, path: q.jsonl, question_field: q, answer_field: a, licence: mit}\n")
    assert {key for key, _ in found} == {"prompts.train[0]"}
    messages = [m for _, m in found]
    assert [m.split(": ")[0] for m in messages] == [f"q.jsonl:{n}" for n in (2, 3, 4, 6, 7, 8, 9)]
    assert messages[0].startswith("q.jsonl:2: not valid JSON")
    assert messages[1] == "q.jsonl:3: a str, not an object with a 'q' field"
    assert messages[2].startswith("q.jsonl:4: no field 'q'; the row's fields: prompt, a (set question_field")
    assert messages[3] == "q.jsonl:6: field 'q' is int, not a string"
    assert messages[4] == "q.jsonl:7: field 'q' is empty"
    assert messages[5].startswith("q.jsonl:8: no field 'a' (answer_field); the row's fields: q (")
    assert messages[6] == "q.jsonl:9: field 'q' is null"


def test_bad_rows_past_twenty_are_counted(tmp_path):
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"n": i}) + "\n" for i in range(25)))
    found = problems(tmp_path, "- {source: jsonl, path: q.jsonl, licence: mit}\n")
    assert [m.split(": ")[0] for _, m in found[:20]] == [f"q.jsonl:{n}" for n in range(1, 21)]
    assert found[20:] == [("prompts.train[0]", "q.jsonl: and 5 more bad rows")]


def test_bad_rows_in_every_source_are_reported_together(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"question": "ok?"}, {"text": "no question"}])
    pq.write_table(pa.Table.from_pylist([{"question": "ok?"}, {"question": None}]), tmp_path / "eval.parquet")
    found = problems(tmp_path, "- {source: jsonl, path: train.jsonl, licence: mit}\n",
                     eval="- {source: arithmetic, count: 3}\n- {source: parquet, path: eval.parquet, licence: mit}\n")
    assert [(key, m.split(": ")[0]) for key, m in found] == [
        ("prompts.train[0]", "train.jsonl:2"), ("prompts.eval[1]", "eval.parquet")]
    assert found[1][1] == "eval.parquet: row 1: field 'question' is null"


def test_rows_past_the_limit_are_not_checked(tmp_path):
    (tmp_path / "q.jsonl").write_text(json.dumps({"question": "What is 1 + 1?"}) + "\n{not json\n")
    rows = train_prompts(tmp_path, "- {source: jsonl, path: q.jsonl, licence: mit, limit: 1}\n")
    assert [r["question"] for r in rows] == ["What is 1 + 1?"]


def test_a_good_file_loads(tmp_path):
    write_jsonl(tmp_path / "q.jsonl", ROWS)
    (tmp_path / "q.jsonl").write_text((tmp_path / "q.jsonl").read_text() + "\n\n")  # trailing blank lines
    rows = train_prompts(tmp_path, "- {source: jsonl, path: q.jsonl, question_field: problem, answer_field: solution, licence: mit}\n")
    assert [(r["question"], r["reference"]) for r in rows] == [(r["problem"], r["solution"]) for r in ROWS]


def test_unreadable_file_is_a_problem(tmp_path):
    (tmp_path / "q.parquet").write_bytes(b"not a parquet file")
    [(key, message)] = problems(tmp_path, "- {source: parquet, path: q.parquet, licence: mit}\n")
    assert key == "prompts.train[0]"
    assert message.startswith("q.parquet: cannot read as parquet: ")


def test_a_row_broken_after_loading_still_fails_the_read(tmp_path):
    write_jsonl(tmp_path / "q.jsonl", [{"question": "ok?"}])
    recipe = recipe_with(tmp_path, "- {source: jsonl, path: q.jsonl, licence: mit}\n")
    (tmp_path / "q.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match=r"q\.jsonl:1: not valid JSON"):
        load_prompts(recipe.prompts.train, "train")


def test_bad_rows_skip_leaves_them_out_and_counts_them(tmp_path, caplog):
    lines = [json.dumps({"question": "What is 1 + 1?"}), "{not json", json.dumps({"text": "hi"}),
             json.dumps({"question": "What is 2 + 2?"}), json.dumps({"question": "What is 3 + 3?"})]
    (tmp_path / "q.jsonl").write_text("\n".join(lines) + "\n")
    path = tmp_path / "recipe.yaml"
    path.write_text("name: prompts-test\nteacher: smollm2-135m-instruct\nprompts:\n  bad_rows: skip\n"
                    "  train:\n    - {source: jsonl, path: q.jsonl, licence: mit, limit: 2}\n")
    with caplog.at_level("WARNING", logger="distill.prompts"):
        recipe = load_recipe(path)
    assert "q.jsonl: 2 bad row(s) left out" in caplog.text
    assert recipe.prompts.train[0].params.skipped_rows == 2
    # The limit counts prompts, not the rows left out on the way.
    rows = load_prompts(recipe.prompts.train, "train")
    assert [r["question"] for r in rows] == ["What is 1 + 1?", "What is 2 + 2?"]
    assert recipe.resolved()["prompts"]["bad_rows"] == "skip"  # part of the run id: it changes the prompts
    summary = build_prompts(SimpleNamespace(recipe=recipe, files=RunDir(tmp_path / "run")))
    assert summary["train"] == 2 and summary["bad_rows_skipped"] == 2  # the stage says what it left out


def test_bad_rows_skip_still_reports_an_unreadable_file(tmp_path):
    (tmp_path / "q.parquet").write_bytes(b"not a parquet file")
    path = tmp_path / "recipe.yaml"
    path.write_text("name: prompts-test\nteacher: smollm2-135m-instruct\nprompts:\n  bad_rows: skip\n"
                    "  train:\n    - {source: parquet, path: q.parquet, licence: mit}\n")
    with pytest.raises(RecipeError, match="cannot read as parquet"):
        load_recipe(path)


def test_validate_lists_bad_rows_and_exits_2(tmp_path):
    from typer.testing import CliRunner

    from distill.cli import app

    (tmp_path / "q.jsonl").write_text("{not json\n\"a string\"\n" + json.dumps({"text": "hi"}) + "\n")
    (tmp_path / "recipe.yaml").write_text("name: prompts-test\nteacher: smollm2-135m-instruct\n"
                                          "prompts:\n  train:\n    - {source: jsonl, path: q.jsonl, licence: mit}\n")
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "recipe.yaml")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for n in (1, 2, 3):
        assert f"prompts.train[0]: q.jsonl:{n}: " in result.output
    assert "3 problem(s)" in result.output


def test_parquet(tmp_path):
    # Answers stored as numbers come back as reference strings.
    table = pa.Table.from_pylist([{"q": r["problem"], "a": int(r["solution"])} for r in ROWS])
    pq.write_table(table, tmp_path / "q.parquet")
    rows = train_prompts(tmp_path, """\
        - source: parquet
          path: q.parquet
          question_field: q
          answer_field: a
          licence: apache-2.0
          limit: 2
    """)
    assert [(r["question"], r["reference"]) for r in rows] == [("What is 2 + 3?", "5"), ("What is 7 - 4?", "3")]
    assert {r["source_licence"] for r in rows} == {"apache-2.0"}
    assert {r["source"] for r in rows} == {"parquet:q.parquet"}


def test_hf_disk_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    rows = train_prompts(tmp_path, """\
        - source: hf-disk
          path: ds
          question_field: problem
          answer_field: solution
          licence: mit
          limit: 2
    """)
    assert [(r["question"], r["reference"]) for r in rows] == [("What is 2 + 3?", "5"), ("What is 7 - 4?", "3")]
    assert {r["source_licence"] for r in rows} == {"mit"}


def test_hf_disk_dataset_dict_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.DatasetDict({
        "train": datasets.Dataset.from_list(ROWS[:1]),
        "test": datasets.Dataset.from_list(ROWS[1:]),
    }).save_to_disk(str(tmp_path / "dd"))
    rows = train_prompts(tmp_path, """\
        - source: hf-disk
          path: dd
          split: test
          question_field: problem
          answer_field: solution
          licence: mit
    """)
    assert [r["question"] for r in rows] == [ROWS[1]["problem"], ROWS[2]["problem"]]

    for split in ("", "split: validation\n"):
        [(key, message)] = problems(
            tmp_path, f"- source: hf-disk\n  path: dd\n  question_field: problem\n  licence: mit\n  {split}")
        assert key == "prompts.train[0]"
        assert message == "dd: a DatasetDict; set split to one of train, test"


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "hf-disk"])
def test_row_without_question_field_names_it(tmp_path, fmt):
    rows = [{"problem": "What is 1 + 1?"}, {"prompt": "What is 2 + 2?"}]
    if fmt == "jsonl":
        write_jsonl(tmp_path / "data", rows)
    elif fmt == "parquet":
        pq.write_table(pa.Table.from_pylist([{"prompt": "What is 2 + 2?"}]), tmp_path / "data")
    else:
        datasets = pytest.importorskip("datasets")
        # A dataset has one schema: the field is absent from every row.
        datasets.Dataset.from_list([{"prompt": "What is 2 + 2?"}]).save_to_disk(str(tmp_path / "data"))
    [(key, message)] = problems(tmp_path, f"- {{source: {fmt}, path: data, question_field: problem, licence: mit}}\n")
    where = "data:2" if fmt == "jsonl" else "data: row 0"
    assert key == "prompts.train[0]"
    assert message.startswith(f"{where}: no field 'problem'; the row's fields: prompt ")


def test_null_question_is_an_error(tmp_path):
    # Columnar files fill an absent value with null; it must not become the question "None".
    pq.write_table(pa.Table.from_pylist([{"question": "What is 1 + 1?"}, {"question": None}]), tmp_path / "q.parquet")
    assert problems(tmp_path, "- {source: parquet, path: q.parquet, licence: mit}\n") == [
        ("prompts.train[0]", "q.parquet: row 1: field 'question' is null")]


def test_file_source_without_licence_is_an_error(tmp_path):
    write_jsonl(tmp_path / "q.jsonl", ROWS)
    with pytest.raises(RecipeError) as info:
        recipe_with(tmp_path, "- {source: jsonl, path: q.jsonl, question_field: problem}\n")
    assert [(p.key, p.message) for p in info.value.problems] == [("prompts.train[0].licence", "required key is missing")]


def test_prompt_ids_are_stable_content_ids(tmp_path):
    # Pinned: ids key resumed runs and held-out sets, so they must not change between versions.
    assert prompt_id("What is 2 + 3?") == "1ea26256ebae2e04"
    write_jsonl(tmp_path / "a.jsonl", [{"question": r["problem"]} for r in ROWS])
    write_jsonl(tmp_path / "b.jsonl", [{"question": r["problem"]} for r in reversed(ROWS)])
    pq.write_table(pa.Table.from_pylist([{"question": r["problem"]} for r in ROWS]), tmp_path / "c.parquet")
    ids = {}
    for name, source in (("a.jsonl", "jsonl"), ("b.jsonl", "jsonl"), ("c.parquet", "parquet")):
        rows = train_prompts(tmp_path, f"- {{source: {source}, path: {name}, licence: mit}}\n")
        ids[name] = {r["question"]: r["prompt_id"] for r in rows}
    assert ids["a.jsonl"] == ids["b.jsonl"] == ids["c.parquet"]
    assert len(set(ids["a.jsonl"].values())) == 3


def test_duplicates_dropped_first_wins(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"question": "What is 2 + 3?", "answer": "5"}, {"question": "What is 2 + 3?", "answer": "6"}])
    pq.write_table(pa.Table.from_pylist([{"question": "What is 2 + 3?", "answer": "7"}, {"question": "New?", "answer": "1"}]),
                   tmp_path / "b.parquet")
    rows = train_prompts(tmp_path, """\
        - {source: jsonl, path: a.jsonl, answer_field: answer, licence: mit}
        - {source: parquet, path: b.parquet, answer_field: answer, licence: cc-by-4.0}
    """)
    assert [(r["question"], r["reference"], r["source"]) for r in rows] == [
        ("What is 2 + 3?", "5", "jsonl:a.jsonl"),
        ("New?", "1", "parquet:b.parquet"),
    ]


def arithmetic(tmp_path: Path, **params) -> list[dict]:
    items = ", ".join(f"{k}: {json.dumps(v)}" for k, v in params.items())
    return train_prompts(tmp_path, f"- {{source: arithmetic, {items}}}\n")


def test_arithmetic_is_seeded(tmp_path):
    first = arithmetic(tmp_path, count=20, seed=5, operations=["+", "-", "*"])
    assert arithmetic(tmp_path, count=20, seed=5, operations=["+", "-", "*"]) == first
    other = arithmetic(tmp_path, count=20, seed=6, operations=["+", "-", "*"])
    assert [r["question"] for r in other] != [r["question"] for r in first]
    assert {r["source_licence"] for r in first} == {"apache-2.0"}
    assert {r["source"] for r in first} == {"arithmetic"}


PLAIN = re.compile(r"What is (\d+) (\+|-|times) (\d+)\?")


def test_arithmetic_reference_answers_are_correct(tmp_path):
    rows = arithmetic(tmp_path, count=300, seed=3, max_operand=50, operations=["+", "-", "*"], style="plain")
    seen = set()
    for r in rows:
        m = PLAIN.match(r["question"])
        assert m, r["question"]
        a, op, b = int(m[1]), m[2], int(m[3])
        assert 1 <= a <= 50 and 1 <= b <= 50
        expected = {"+": a + b, "-": a - b, "times": a * b}[op]
        assert r["reference"] == str(expected), r["question"]
        assert expected >= 0
        seen.add(op)
    assert seen == {"+", "-", "times"}


def test_arithmetic_operations_chosen(tmp_path):
    rows = arithmetic(tmp_path, count=50, seed=0, operations=["-"], style="plain")
    assert all(PLAIN.match(r["question"])[2] == "-" for r in rows)


def test_arithmetic_count_respected(tmp_path):
    recipe = recipe_with(tmp_path, "- {source: arithmetic, count: 37, seed: 1}\n")
    generated = list(PROMPT_SOURCES.get("arithmetic").fn(recipe.prompts.train[0].params))
    assert len(generated) == 37
    # Operands up to 10^6 make repeats (dropped as duplicates) practically impossible.
    assert len(arithmetic(tmp_path, count=37, seed=1, max_operand=1_000_000)) == 37


def test_arithmetic_params_checked(tmp_path):
    with pytest.raises(RecipeError) as info:
        recipe_with(tmp_path, "- {source: arithmetic, count: 0, operations: ['/']}\n")
    keys = {p.key for p in info.value.problems}
    assert keys == {"prompts.train[0].count", "prompts.train[0].operations[0]"}


def test_build_prompts_keeps_eval_held_out(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"question": r["problem"], "answer": r["solution"]} for r in ROWS])
    write_jsonl(tmp_path / "eval.jsonl", [{"question": ROWS[1]["problem"], "answer": "3"}, {"question": "Held out?", "answer": "0"}])
    recipe = recipe_with(
        tmp_path,
        train="- {source: jsonl, path: train.jsonl, answer_field: answer, licence: mit}\n",
        eval="- {source: jsonl, path: eval.jsonl, answer_field: answer, licence: mit}\n",
    )
    run_dir = tmp_path / "run"
    summary = build_prompts(SimpleNamespace(recipe=recipe, files=RunDir(run_dir)))
    assert summary == {"train": 2, "eval": 2, "train_overlapping_eval": 1}
    train = RunDir(run_dir).read_prompts("train")
    eval_ = RunDir(run_dir).read_prompts("eval")
    assert [r["question"] for r in train] == [ROWS[0]["problem"], ROWS[2]["problem"]]
    assert [r["question"] for r in eval_] == [ROWS[1]["problem"], "Held out?"]
    assert {r["split"] for r in train} == {"train"} and {r["split"] for r in eval_} == {"eval"}
    assert not {r["prompt_id"] for r in train} & {r["prompt_id"] for r in eval_}
