"""The demo agent's logs: seeded, in the shape the import reads, right answers, the mishaps of a
real log, planted personal data the import redacts, and the truth kept out of the log."""

import json
from collections import Counter

import jsonschema
import pytest

from distill.prompts.tool_tasks import catalogue
from distill.usage import UsageStore
from distill.usage.openai_log import parse_record
from distill.usage.records import Call, Source
from distill.usage.synthetic import FIELDS, generate_logs, sidecar_path, spec, write_demo_logs


@pytest.fixture(scope="module")
def log():
    return generate_logs(calls=800, seed=3, untagged=0.3)


def test_the_same_seed_gives_the_same_log_and_another_seed_another():
    a, b, c = generate_logs(50, seed=1), generate_logs(50, seed=1), generate_logs(50, seed=2)
    assert a.records == b.records and a.workloads == b.workloads
    assert a.records != c.records


def test_every_record_is_a_call_the_openai_reader_takes(log):
    calls = [parse_record(r, Source("demo.jsonl", n)) for n, r in enumerate(log.records, 1)]
    assert all(isinstance(c, Call) for c in calls), [str(c) for c in calls if not isinstance(c, Call)][:3]
    assert len(log.records) == len(log.workloads) == 800
    times = [r["timestamp"] for r in log.records]
    assert times == sorted(times)
    assert spec()["days"] <= len({t[:10] for t in times}) <= spec()["days"] + 1  # + a retry past midnight
    ok = [r for r in log.records if r.get("response")]
    assert all(r["response"]["usage"]["prompt_tokens"] > 0 and r["latency_ms"] > 0 and r["client_id"] for r in ok)


def test_workloads_of_every_kind_each_with_its_own_prompt(log):
    assert set(log.kinds.values()) == {"tool-routing", "extraction", "classification", "summary"}
    assert set(log.workloads) == set(log.kinds)
    tagged = [(r["workload_id"], w) for r, w in zip(log.records, log.workloads) if "workload_id" in r]
    assert tagged and all(tag == truth for tag, truth in tagged)  # a tag, where there is one, is the truth
    systems = {w: {r["request"]["messages"][0]["content"][:40] for r, x in zip(log.records, log.workloads) if x == w}
               for w in log.kinds}
    assert systems["travel-desk"].isdisjoint(systems["office-assistant"])
    assert systems["ticket-fields"].isdisjoint(systems["ticket-intent"])


def test_the_untagged_share_is_what_was_asked():
    for share in (0.0, 0.3, 1.0):
        records = generate_logs(600, seed=5, untagged=share).records
        bare = sum("workload_id" not in r for r in records) / len(records)
        assert bare == pytest.approx(share, abs=0.06)


def test_the_answers_are_right(log):
    checked = Counter()
    for r, w in zip(log.records, log.workloads):
        if not r.get("response") or r["response"]["choices"][0]["finish_reason"] == "length":
            continue
        kind, answer = log.kinds[w], r["response"]["choices"][0]["message"]
        user = r["request"]["messages"][-1]["content"]
        if kind == "tool-routing":
            [call] = answer["tool_calls"]
            [tool] = [t for t in r["request"]["tools"] if t["function"]["name"] == call["function"]["name"]]
            args = json.loads(call["function"]["arguments"])
            jsonschema.validate(args, tool["function"]["parameters"])
            assert all(str(v).lower() in user.lower() or isinstance(v, bool) for v in args.values()), (user, args)
        elif kind == "extraction":
            fields = json.loads(answer["content"])
            assert list(fields) == list(FIELDS)
            assert all(v is None or v in user for v in fields.values()), (user, fields)
        elif kind == "classification":
            assert answer["content"] in spec()["workloads"][w]["labels"]
        else:
            assert answer["content"].endswith(".") and len(answer["content"]) < len(user)
        checked[kind] += 1
    assert min(checked.values()) > 50


def test_a_real_log_s_mishaps_are_there(log):
    errors = [r for r in log.records if r.get("error")]
    cut = [r for r in log.records if r.get("response") and r["response"]["choices"][0]["finish_reason"] == "length"]
    assert errors and cut
    for r in cut:
        with pytest.raises(json.JSONDecodeError):
            json.loads(r["response"]["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"])
    lines = Counter(json.dumps(r, sort_keys=True) for r in log.records)
    assert max(lines.values()) == 2  # a line logged twice
    requests = Counter(json.dumps(r["request"], sort_keys=True) for r in log.records)
    assert sum(n > 1 for n in requests.values()) > 10  # retries and duplicates send a request again


def test_the_import_sees_no_truth_and_redacts_every_planted_value(demo):
    # Nothing in an untagged record names its workload: the truth is only beside the log.
    for r, w in zip(demo.log.records, demo.log.workloads):
        if "workload_id" not in r:
            assert w not in json.dumps(r)
    summary = demo.summary
    assert summary.new > 1100 and summary.repeated > 0
    assert summary.failed["error"] and summary.failed["bad-arguments"] and summary.failed["retried"]
    assert summary.duplicates["exact"]
    assert {"person", "email", "phone", "iban", "secret"} <= set(summary.redactions)
    stored = json.dumps(UsageStore.open(demo.store).read_calls().to_pylist(), default=str, ensure_ascii=False)
    assert len(demo.log.planted) > 500
    assert [v for v in demo.log.planted if v in stored] == []


def test_the_tool_routing_uses_the_tool_catalogue(log):
    names = {n for r in log.records for t in r["request"].get("tools") or [] for n in [t["function"]["name"]]}
    assert names and names <= set(catalogue()["functions"])


def test_the_sidecar_holds_the_true_workload_of_every_line(tmp_path):
    out = tmp_path / "logs.jsonl"
    written = write_demo_logs(out, calls=40, seed=9, untagged=0.5)
    side = json.loads(sidecar_path(out).read_text())
    assert sidecar_path(out).name == "logs.workloads.json"
    assert side["lines"] == written.workloads and len(out.read_text().splitlines()) == 40
    assert side["kinds"] == written.kinds and (side["seed"], side["untagged"]) == (9, 0.5)


@pytest.mark.parametrize("calls, untagged, message", [(0, 0.3, "calls: 0"), (10, 1.5, "untagged: 1.5")])
def test_bad_parameters_are_refused(calls, untagged, message):
    with pytest.raises(ValueError, match=message):
        generate_logs(calls, untagged=untagged)
