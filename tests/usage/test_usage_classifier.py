"""The router's request classifier on the demo agent's logs: held-back requests route to their true
workload, a prompt revision it never saw by its centroid, a request unlike every cluster to none;
clusters it may not answer are never answered but still recognised; the saved file reads back the
same, a bad one says what to do; `stale` says when the store moved on."""

import copy
import json
import re
import shutil
from dataclasses import dataclass

import pytest

from distill.usage import import_logs
from distill.usage.classifier import (MIN_SIGNATURE_CALLS, NO_ROUTE, VERSION, ClassifierError, RequestClassifier,
                                      request_fields)
from distill.usage.clusters import cluster_store
from distill.usage.store import UsageStore
from distill.usage.synthetic import spec, write_demo_logs

# Measured 2026-12-07 on the demo store (seed 7, 1200 calls, a quarter held back): 299 of 299
# held-back requests routed to their true workload (1.000), and every request with an edited or
# unseen system prompt. The floors leave room for a few.
AGREEMENT_FLOOR = 0.97
REVISION_FLOOR = 0.95

UNLIKE_ANY_CLUSTER = [
    {"messages": [{"role": "system", "content": "You are a poet."},
                  {"role": "user", "content": "Write a haiku about autumn leaves."}]},
    # The prompt of two clusters (ticket-summary, and mail-priority's second revision), another task.
    {"messages": [{"role": "system", "content": "You are a helpful assistant."},
                  {"role": "user", "content": "Translate into German: the weather is nice today and I would like "
                                              "to go for a walk in the park."}]},
    {"messages": [{"role": "system", "content": "You write Python code."},
                  {"role": "user", "content": "Write a function that reverses a linked list."}],
     "tools": [{"type": "function", "function": {"name": "run_python", "parameters": {"type": "object"}}}]},
    {"messages": [{"role": "system", "content": "You are the assistant of a bakery. Answer questions about "
                                                "opening hours and cakes."},
                  {"role": "user", "content": "Do you have a gluten-free chocolate cake for Saturday?"}]},
]


@dataclass
class Fitted:
    store: str  # the demo store, clustered by workload_id (its untagged calls join their workload)
    classifier: RequestClassifier  # learnt from three stored calls in four
    calls: list[tuple[str, dict, str]]  # (call_id, the request as logged, true workload) of every stored call
    held: list[tuple[dict, str]]  # (request, true workload) of the calls it did not learn from


@pytest.fixture(scope="module")
def fitted(demo, tmp_path_factory) -> Fitted:
    store = str(tmp_path_factory.mktemp("classifier") / "store")
    shutil.copytree(demo.store, store)
    cluster_store(store)
    rows = UsageStore.open(store).read_calls(["call_id", "source_line"]).to_pylist()
    calls = [(r["call_id"], demo.log.records[r["source_line"] - 1]["request"], demo.truth[r["call_id"]]) for r in rows]
    held = calls[::4]
    classifier = RequestClassifier.fit(store, leave_out={call_id for call_id, _, _ in held})
    return Fitted(store, classifier, calls, [(request, workload) for _, request, workload in held])


def agreement(classifier: RequestClassifier, pairs: list[tuple[dict, str]]) -> float:
    return sum(classifier.classify(request).cluster == workload for request, workload in pairs) / len(pairs)


def edited(request: dict, system: str | None = None, parts: bool = False, tools: bool = True) -> dict:
    """A copy of a request: another system prompt, every content as a list of parts, or no tools."""
    out = copy.deepcopy(request)
    if system is not None:
        out["messages"][0]["content"] = system
    if parts:
        for m in out["messages"]:
            m["content"] = [{"type": "text", "text": m["content"]},
                            {"type": "image_url", "image_url": {"url": "https://example.com/scan.png"}}]
    if not tools:
        out.pop("tools", None)
    return out


def test_held_back_requests_route_to_their_true_workload(fitted, measured):
    routes = [fitted.classifier.classify(request) for request, _ in fitted.held]
    rate = agreement(fitted.classifier, fitted.held)
    by_how = {how: sum(r.how == how for r in routes) for how in ("signature", "centroid", "none")}
    measured.append(f"classifier: {rate:.3f} of {len(routes)} held-back requests routed to their true workload "
                    f"({', '.join(f'{n} by {how}' for how, n in by_how.items())})")
    assert rate >= AGREEMENT_FLOOR, rate
    # Most by their signature; the prompt two workloads share ("You are a helpful assistant.") by centroid.
    assert by_how["signature"] > by_how["centroid"] > 0
    assert all(r.confidence >= fitted.classifier.min_share for r in routes if r.how == "signature")
    shared = [r for (request, _), r in zip(fitted.held, routes)
              if request["messages"][0]["content"] == "You are a helpful assistant."]
    assert shared and {r.how for r in shared} == {"centroid"}


def test_an_edited_system_prompt_routes_by_centroid(fitted, measured):
    extra = " Keep the customer's data confidential and be brief."
    pairs = [(edited(request, request["messages"][0]["content"] + extra), workload) for request, workload in fitted.held]
    routes = [fitted.classifier.classify(request) for request, _ in pairs]
    rate = agreement(fitted.classifier, pairs)
    measured.append(f"classifier: {rate:.3f} of {len(pairs)} requests with an edited system prompt routed right")
    assert {r.how for r in routes} == {"centroid"}  # no signature knows the edited prompts
    assert rate >= REVISION_FLOOR, rate


@pytest.mark.parametrize("workload", ["travel-desk", "ticket-fields"])
def test_a_prompt_revision_it_hardly_saw_routes_by_centroid(fitted, workload):
    """Learnt from too few calls of the workload's first prompt revision to trust its signature (and
    without the rest), it routes the rest by the centroids of the second revision (travel-desk's
    also offers other tools)."""
    first = spec()["workloads"][workload]["system"][0]
    revision = [(call_id, request) for call_id, request, w in fitted.calls
                if w == workload and request["messages"][0]["content"] == first]
    seen, unseen = revision[:MIN_SIGNATURE_CALLS - 1], revision[MIN_SIGNATURE_CALLS - 1:]
    assert seen and len(unseen) > 50
    classifier = RequestClassifier.fit(fitted.store, leave_out={call_id for call_id, _ in unseen})
    routes = [classifier.classify(request) for _, request in unseen]
    assert {r.how for r in routes} == {"centroid"}
    assert sum(r.cluster == workload for r in routes) >= REVISION_FLOOR * len(routes)


def test_a_request_unlike_any_cluster_routes_to_none(fitted):
    for request in UNLIKE_ANY_CLUSTER:
        assert fitted.classifier.classify(request) == NO_ROUTE, request
    # Not for want of known words: the shared prompt is known whole, its task is not.
    assert fitted.classifier.vectorizer.transform(*request_fields(UNLIKE_ANY_CLUSTER[1]))[0]


def test_clusters_it_may_not_answer_are_never_answered_but_still_recognised(fitted):
    excluded = {"ticket-summary", "travel-desk"}
    answers = sorted({w for _, _, w in fitted.calls} - excluded)
    leave_out = {call_id for call_id, _, _ in fitted.calls[::4]}
    classifier = RequestClassifier.fit(fitted.store, clusters=answers, leave_out=leave_out)
    routes = [classifier.classify(request) for request, _ in fitted.held]
    assert classifier.answers == answers and not {r.cluster for r in routes} & excluded
    for (request, workload), route in zip(fitted.held, routes):
        if workload in excluded:
            assert route.cluster is None, (workload, route)
        else:
            assert route == fitted.classifier.classify(request)  # as if every cluster were answered
    # Their calls are the evidence: learnt without ticket-summary's calls, its requests (sent with the
    # prompt it shares with mail-priority) are taken for mail-priority's.
    summary = {call_id for call_id, _, w in fitted.calls if w == "ticket-summary"}
    blind = RequestClassifier.fit(fitted.store, clusters=answers, leave_out=leave_out | summary)
    assert sum(blind.classify(request).cluster == "mail-priority"
               for request, w in fitted.held if w == "ticket-summary") > 0


def test_save_and_load_give_the_same_routes(fitted, tmp_path):
    path = tmp_path / "router" / "classifier.json"
    fitted.classifier.save(path)
    loaded = RequestClassifier.load(path)
    requests = [request for request, _ in fitted.held] + UNLIKE_ANY_CLUSTER + \
        [edited(request, "You help the customer.") for request, _ in fitted.held[:40]]
    assert [loaded.classify(q) for q in requests] == [fitted.classifier.classify(q) for q in requests]
    assert (loaded.meta, loaded.answers) == (fitted.classifier.meta, fitted.classifier.answers)
    loaded.save(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_text() == path.read_text()
    data = json.loads(path.read_text())
    assert data["version"] == VERSION and data["store"] == fitted.store and data["learnt_from"] < data["store_calls"]


def _json(edit):
    """A spoiler of a saved file: `edit` applied to its JSON."""
    def spoil(blob: bytes) -> bytes:
        data = json.loads(blob)
        edit(data)
        return json.dumps(data).encode()
    return spoil


REFIT = "fit the classifier again"


@pytest.mark.parametrize("spoil, message", [
    (None, f"no such file; give the file RequestClassifier.save wrote, or {REFIT}"),
    (lambda blob: blob[: len(blob) // 2], f"cannot be read as JSON .*; {REFIT}"),
    (lambda blob: b"\xff\xfe{}", f"cannot be read as JSON .*; {REFIT}"),
    (lambda blob: b"[]", "not a saved request classifier"),
    (_json(lambda d: d.update(kind="distill usage clusters")),
     "not a saved request classifier .*RequestClassifier.save wrote"),
    (_json(lambda d: d.update(version=VERSION + 1)),
     f"classifier version {VERSION + 1}, this distill reads version {VERSION}; upgrade distill"),
    (_json(lambda d: d.update(version=1)), f"classifier version 1, this distill reads version {VERSION}; {REFIT}"),
    (_json(lambda d: d.pop("version")), f"classifier version None, this distill reads version {VERSION}; {REFIT}"),
    (_json(lambda d: d.pop("centroids")), f"without its 'centroids' field; {REFIT}"),
    (_json(lambda d: d.update(centroids=[[0.5, 0.5]])), f"a bad field .*; {REFIT}"),
    (_json(lambda d: d["vectorizer"].update(pattern="(")), f"a bad field .*; {REFIT}"),
    (_json(lambda d: d["vectorizer"]["weights"].pop("user")),
     "vectorizer weights .*not one for each of system, tools, user"),
])
def test_a_bad_file_says_what_is_wrong_and_what_to_do(fitted, tmp_path, spoil, message):
    path = tmp_path / "classifier.json"
    if spoil is not None:
        fitted.classifier.save(path)
        path.write_bytes(spoil(path.read_bytes()))
    with pytest.raises(ClassifierError, match=message) as e:
        RequestClassifier.load(path)
    assert str(e.value).startswith(f"{path}: ")


def test_stale_says_when_the_store_gained_calls_or_was_clustered_again(fitted, tmp_path):
    copy_ = str(tmp_path / "store")
    shutil.copytree(fitted.store, copy_)
    assert fitted.classifier.stale() is None and fitted.classifier.stale(copy_) is None
    cluster_store(copy_, key=None)  # other clusters: automatic ones, not the tags
    assert "was clustered again since the classifier was learnt" in fitted.classifier.stale(copy_)
    cluster_store(copy_)  # the tags again: the same clusters as it learnt from
    assert fitted.classifier.stale(copy_) is None
    write_demo_logs(tmp_path / "more.jsonl", calls=20, seed=99)
    import_logs([str(tmp_path / "more.jsonl")], copy_, use_ner=False)
    stored, now = fitted.classifier.meta["store_calls"], UsageStore.open(copy_).read_manifest()["records"]
    assert now > stored
    reason = fitted.classifier.stale(copy_)
    assert reason == (f"{copy_} now holds {now} calls, the classifier was learnt when it held {stored}; "
                      f"run `distill usage clusters {copy_}` and fit the classifier again")
    with pytest.raises(ClassifierError, match=f"{now - stored} of its {now} calls were imported after the last clust"):
        RequestClassifier.fit(copy_)


def test_fit_says_what_is_missing(fitted, tmp_path):
    unclustered = tmp_path / "store"
    shutil.copytree(fitted.store, unclustered, ignore=shutil.ignore_patterns("clusters.*"))
    never = re.escape(f"never clustered; run `distill usage clusters {unclustered}` first")
    with pytest.raises(ClassifierError, match=never):
        RequestClassifier.fit(str(unclustered))
    with pytest.raises(ClassifierError, match="clusters 'billing': not clusters of .*; give some of mail-priority, "):
        RequestClassifier.fit(fitted.store, clusters=["travel-desk", "billing"])
    with pytest.raises(ClassifierError, match=r"clusters \[\]: .*or None to answer them all"):
        RequestClassifier.fit(fitted.store, clusters=[])
    with pytest.raises(ClassifierError, match="every call is left out"):
        RequestClassifier.fit(fitted.store, leave_out=[call_id for call_id, _, _ in fitted.calls])
    with pytest.raises(ClassifierError, match=r"min_share 0: give a share in \(0, 1\]"):
        RequestClassifier.fit(fitted.store, min_share=0)


@pytest.mark.parametrize("request_, fields", [
    ({}, None),
    ({"messages": []}, None),
    ({"messages": "Book a hotel"}, None),
    ("Book a hotel", None),
    ({"messages": [{"role": "user", "content": None}, "junk"]}, None),
    ({"messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                   {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Book a hotel"}]},
     ("Be brief.", (), "Book a hotel")),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "Book"},
                                                {"type": "image_url", "image_url": {"url": "x"}},
                                                {"type": "text", "text": "a hotel"}]}]},
     ("", (), "Book\na hotel")),
    ({"messages": [{"role": "user", "content": "Book"}],
      "tools": [{"type": "function", "function": {"name": "book_hotel"}}, {"name": "get_weather"}, "junk",
                {"type": "function", "function": None}, {"function": {"name": ""}}]},
     ("", ("book_hotel", "get_weather"), "Book")),
    ({"messages": [{"role": "user", "content": "Book"}], "tools": "book_hotel"}, ("", (), "Book")),
])
def test_what_is_read_of_a_request(request_, fields):
    assert request_fields(request_) == fields


def test_malformed_requests_route_without_an_error(fitted):
    # _classify: what classify runs, without the guard that turns an error into "none".
    route = fitted.classifier._classify
    for request in ({}, {"messages": []}, {"messages": [42]}, None, "Book a hotel",
                    {"messages": [{"role": "user", "content": {"text": "Book a hotel"}}]}):
        assert route(request) == NO_ROUTE, request
    # Content as a list of parts (an image among them) routes as the same text would.
    sample = fitted.held[:60]
    routes = [route(q) for q, _ in sample]
    assert [route(edited(q, parts=True)) for q, _ in sample] == routes and NO_ROUTE not in routes
    # Without its tools a tool-routing request has no known signature; its prompt and text still place it.
    tool_requests = [(q, w) for q, w in fitted.held if q.get("tools")]
    routes = [route(edited(q, tools=False)) for q, _ in tool_requests]
    assert tool_requests and {r.how for r in routes} == {"centroid"}
    assert sum(r.cluster == w for r, (_, w) in zip(routes, tool_requests)) >= REVISION_FLOOR * len(routes)
