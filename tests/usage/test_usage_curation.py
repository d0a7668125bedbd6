"""Failed calls and duplicates are kept, marked and counted: error responses, tool arguments that
are not JSON, retried requests; exact and near duplicates, within an import and across imports."""

import pytest

from distill.usage import UsageStore, import_logs
from support.usage_logs import openai_record, write_jsonl

# Near-duplicate judging uses the near-dedup filter's defaults (word 5-grams, Jaccard 0.8): one
# word changed in a text of this length is near, in a short one it is not.
LONG = ("I need to change my booking from the morning flight to the evening flight on the same day, keep the "
        "aisle seat if possible and add one checked bag of twenty kilos to the reservation, thank you very much. "
        "Also please make sure the confirmation email lists the new departure time, the gate if it is already "
        "known, and the updated baggage allowance so that I can print it before I leave for the airport.")


def stored(store) -> dict[str, dict]:
    return {r["source_line"]: r for r in UsageStore.open(store).read_calls().to_pylist()}


def test_failed_calls_are_kept_with_their_status_and_counted(tmp_path):
    log = write_jsonl(tmp_path / "calls.jsonl", [
        openai_record("ok one", response_id="r1"),
        openai_record("boom", error={"type": "server_error", "message": "upstream timed out"}),
        openai_record("bad args", None, response_id="r3", tool_calls=[("book_flight", '{"flight": "LH4')]),
        openai_record("not an object", None, response_id="r4", tool_calls=[("book_flight", '["LH4"]')]),
        openai_record("book LH7", response_id="r5", timestamp="2025-05-01T10:00:00Z"),
        openai_record("book LH7", response_id="r6", timestamp="2025-05-01T10:00:20Z"),  # sent again 20 s later
        openai_record("book LH8", response_id="r7", timestamp="2025-05-01T10:00:00Z"),
        openai_record("book LH8", response_id="r8", timestamp="2025-05-02T10:00:00Z"),  # a day later: new work
        openai_record("book LH9", response_id="r9", client_id="agent-1"),
        openai_record("book LH9", response_id="r10", client_id="agent-2"),  # another client: not a retry
    ])
    summary = import_logs([str(log)], str(tmp_path / "store"))
    rows = stored(str(tmp_path / "store"))
    assert len(rows) == 10
    status = {line: r["status"] for line, r in rows.items()}
    assert status == {1: "ok", 2: "error", 3: "bad-arguments", 4: "bad-arguments", 5: "retried", 6: "ok",
                      7: "ok", 8: "ok", 9: "ok", 10: "ok"}
    assert rows[2]["status_reason"] == "server_error: upstream timed out" and rows[2]["completion"] == []
    assert "not valid JSON" in rows[3]["status_reason"] and "not a JSON object" in rows[4]["status_reason"]
    assert rows[5]["status_reason"] == f"the same request was sent again ({log}:6)"
    assert dict(summary.failed) == {"error": 1, "bad-arguments": 2, "retried": 1}
    assert "4 failed (2 bad-arguments, 1 error, 1 retried)" in summary.paragraph()


def test_retries_without_times_are_found_in_file_order(tmp_path):
    log = write_jsonl(tmp_path / "calls.jsonl", [openai_record("again", response_id=f"r{i}", timestamp=None)
                                                  for i in range(3)])
    import_logs([str(log)], str(tmp_path / "store"))
    assert [r["status"] for _, r in sorted(stored(str(tmp_path / "store")).items())] == ["retried", "retried", "ok"]


def test_exact_and_near_duplicates_are_marked_not_dropped(tmp_path):
    log = write_jsonl(tmp_path / "calls.jsonl", [
        openai_record(LONG, "Your booking is changed.", response_id="r1", timestamp="2025-05-01T10:00:00Z"),
        openai_record(LONG, "Your booking is changed.", response_id="r2", timestamp="2025-05-03T10:00:00Z"),
        openai_record(LONG.replace("twenty", "thirty"), "Your booking is changed.", response_id="r3",
                      timestamp="2025-05-05T10:00:00Z"),
        openai_record("What is the baggage allowance on a domestic flight in economy class?", "23 kg.", response_id="r4"),
    ])
    summary = import_logs([str(log)], str(tmp_path / "store"))
    rows = stored(str(tmp_path / "store"))
    assert len(rows) == 4
    assert (rows[1]["duplicate"], rows[2]["duplicate"], rows[3]["duplicate"], rows[4]["duplicate"]) == \
        (None, "exact", "near", None)
    assert rows[2]["duplicate_of"] == rows[3]["duplicate_of"] == rows[1]["call_id"]
    assert dict(summary.duplicates) == {"exact": 1, "near": 1}


def test_duplicates_of_calls_from_an_earlier_import_name_them(tmp_path):
    store = str(tmp_path / "store")
    import_logs([str(write_jsonl(tmp_path / "day1.jsonl", [openai_record(LONG, "Changed.", response_id="a")]))], store)
    second = import_logs([str(write_jsonl(tmp_path / "day2.jsonl", [
        openai_record(LONG, "Changed.", response_id="b", timestamp="2025-06-01T00:00:00Z"),
        openai_record(LONG.replace("kilos", "kg"), "Changed.", response_id="c", timestamp="2025-06-02T00:00:00Z")]))],
        store)
    rows = UsageStore.open(store).read_calls().to_pylist()
    first_id = rows[0]["call_id"]
    assert [(r["duplicate"], r["duplicate_of"]) for r in rows] == [(None, None), ("exact", first_id), ("near", first_id)]
    assert second.new == 2 and dict(second.duplicates) == {"exact": 1, "near": 1}


@pytest.mark.parametrize("history", [False, True])
def test_calls_that_share_a_system_prompt_and_history_are_not_duplicates(tmp_path, history):
    """An agent's steps repeat its system prompt and the conversation so far; only what is new counts."""
    system = "You are a travel agent. " * 40
    past = [{"role": "user", "content": LONG}, {"role": "assistant", "content": "Which day?"}] if history else []
    log = write_jsonl(tmp_path / "steps.jsonl", [
        openai_record("Tuesday the fourth, please", "Booked for Tuesday.", system=system, history=past, response_id="s1"),
        openai_record("Actually make it Friday the seventh", "Booked for Friday.", system=system, history=past,
                      response_id="s2"),
    ])
    summary = import_logs([str(log)], str(tmp_path / "store"))
    assert sum(summary.duplicates.values()) == 0
