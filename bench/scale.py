"""Cost of the post-sampling stages as a run grows: seconds, peak memory and files in the run
directory at 1e5, 1e6 and 1e7 samples; each step should be linear or better (a 10x larger run
takes at most 11x as long), its memory bounded, and the run directory's file count bounded.

No model is needed. For each size the bench writes a run directory as the sample stage leaves
it: the recipe's prompts stage writes arithmetic word problems, and the sample stage's own code
(`_generate`: records, verifiers, parts named by their work) writes the samples a synthetic
teacher gives, n per prompt, in parts of `sampling.batch_size` rows. The teacher answers each
4,096 prompts' samples in a shuffled order (replicas finish batches out of order), with short
reasoning in a few phrasings,
right about half the time; some samples of a prompt repeat one another, a few are cut off by
the token limit, a few are errors. Writing them is not timed.

Then each step runs in a fresh process of its own (bench/sides.py), so its peak RSS is its own:
- sample: the sample stage finding its work done (what is done, the verdict summary);
- compact: the samples parts merged into a few large sorted ones, as the filter stage does
  first (distill/run.py, `compact_samples`); the filter stage then finds it done;
- filter: the filter stage (exact-dedup, near-dedup on a local Ray, decontaminate against the
  eval prompts), and each of those filters alone over every candidate (reading them not timed);
  Ray is started, and one small near-dedup done, before the clock starts, as in a pipeline run
  whose teacher's engines started Ray;
- dataset: the dataset stage;
- lineage register / query: the run registered in a fresh SQLite lineage store, then what
  derives from the teacher, the licence and the dataset;
- report: the report stage.
A step's peak RSS is the process's (imports included; near-dedup's Ray workers are other
processes); "+MB" is what the step added to the peak the process had before it started.

    python bench/scale.py [--sizes 1e5,1e6,1e7] [--out DIR] [--n 8] [--batch-size 64] [--steps a,b]
                          [--max-rss-gb 16]

A step that fails (killed for want of memory, or over --max-rss-gb) is reported as failed and
the rest go on; results.json is written after every step.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sides import emit

SIZES = "1e5,1e6,1e7"
FILTERS = ("exact-dedup", "near-dedup", "decontaminate")
STEPS = ("sample", "compact", "filter", *(f"filter:{f}" for f in FILTERS), "dataset", "lineage-register",
         "lineage-query", "report")
# A run 10x larger may take at most 11x as long: linear, with a little room for noise (any other
# size ratio r: 1.1 r).
SLACK = 1.1
MAX_PROMPTS_PER_SOURCE = 1_000_000  # the arithmetic source's own limit
CHUNK_PROMPTS = 4_096  # prompts whose samples are made at once while writing
RIGHT_SHARE, CUT_OFF_SHARE, ERROR_SHARE = 0.5, 0.02, 0.002

PHRASINGS = [
    "Let's think step by step. The numbers in the question are {a} and {b}. Working it out gives {x}. "
    "So the answer is {x}.",
    "First, write down the numbers: {a} and {b}. Then do what the question asks with them. That gives {x}. "
    "The final answer is {x}.",
    "We start with {a}. The question then brings in {b}. Putting the two together, we get {x}. "
    "We can check it once more: {x}. The answer is {x}.",
    "The question asks us to combine {a} and {b}. Working it out carefully, the result is {x}. Answer: {x}",
    "{x}",
    "To solve this we use {a} and {b}. {a} and {b} give {x}. \\boxed{{{x}}}",
]
RAMBLE = ("Let me think about this problem. We have some numbers and we need to combine them, but first let "
          "us look at what the question is really asking and which of the numbers matter for the answer ")


def recipe_for(samples: int, n: int, batch_size: int, root: Path) -> Path:
    """A recipe whose prompts stage writes samples // n training prompts, with the filters timed here."""
    prompts = max(1, samples // n)
    sources = []
    for k, ops in enumerate(["+", "-", "*"]):  # one operation per source: their questions never collide
        count = min(MAX_PROMPTS_PER_SOURCE, prompts - sum(s["count"] for s in sources))
        if count <= 0:
            break
        sources.append({"source": "arithmetic", "count": count, "seed": 10 + k, "max_operand": 100_000,
                        "operations": [ops]})
    if sum(s["count"] for s in sources) < prompts:
        sys.exit(f"{samples:,} samples at n={n} need more than {len(sources) * MAX_PROMPTS_PER_SOURCE:,} prompts; "
                 "raise --n")
    recipe = {
        "name": f"scale-{samples}",
        "teacher": "smollm2-135m-instruct",
        "prompts": {"train": sources, "eval": [{"source": "arithmetic", "count": 100, "seed": 2}]},
        "sampling": {"n": n, "max_tokens": 128, "batch_size": batch_size},
        "verifiers": [{"name": "final-number"}],
        "filters": [{"name": name} for name in FILTERS],
        "tracking": {"wandb": "disabled"},
        "output_dir": str(root / "runs"),
    }
    path = root / "recipe.yaml"
    path.write_text(json.dumps(recipe, indent=2))  # JSON is YAML
    return path


class SyntheticTeacher:
    """A backend that answers arithmetic questions without a model, deterministically per work id."""

    def __init__(self, prompts: dict, batch_size: int, seed: int):
        self.prompts, self.batch_size, self.seed = prompts, batch_size, seed

    def describe(self) -> dict:
        return {"backend": "vllm", "version": "0.0-synthetic", "chat_template": None,
                "engine_args": {"max_model_len": 2048, "max_num_seqs": 256, "block_size": 32, "dtype": "float32"}}

    def generate(self, requests: list[dict]):
        order = list(requests)
        random.Random(self.seed).shuffle(order)
        for start in range(0, len(order), self.batch_size):
            k = start // self.batch_size % 2  # two engine replicas take turns
            replica = f"actor {k:032x} pid {4000 + k} node 10.0.0.1"
            yield [self.answer(r) | {"replica": replica} for r in order[start : start + self.batch_size]]

    def answer(self, request: dict) -> dict:
        prompt_id = request["work_id"].rsplit(":", 1)[0]
        p = self.prompts[prompt_id]
        rng = random.Random(request["work_id"])
        prompt_tokens = 40 + len(p["question"].split())
        roll = rng.random()
        if roll < ERROR_SHARE:
            return {"work_id": request["work_id"], "text": None, "prompt_tokens": 0, "completion_tokens": 0,
                    "finish_reason": "error", "error": "prompt too long"}
        if roll < ERROR_SHARE + CUT_OFF_SHARE:
            text = (RAMBLE * 4)[: rng.randint(300, 500)]
            return {"work_id": request["work_id"], "text": text, "prompt_tokens": prompt_tokens,
                    "completion_tokens": 128, "finish_reason": "length", "error": ""}
        a, b = (re.findall(r"\d+", p["question"]) + ["1", "1"])[:2]
        right = int(p["reference"])
        # Few distinct phrasings and wrong answers per prompt: some samples of a prompt repeat each other.
        x = right if rng.random() < RIGHT_SHARE else right + rng.choice([-10, -2, -1, 1, 2, 10])
        text = rng.choice(PHRASINGS).format(a=a, b=b, x=x)
        return {"work_id": request["work_id"], "text": text, "prompt_tokens": prompt_tokens,
                "completion_tokens": 4 + len(text) // 4, "finish_reason": "stop", "error": ""}


def build(samples: int, n: int, batch_size: int, root: Path) -> dict:
    """Writes the run directory of `samples` samples as the prompts and sample stages leave it."""
    from datetime import datetime, timezone

    from distill.pipeline import open_run
    from distill.recipe import load_recipe
    from distill.stages.prompts import build_prompts
    from distill.stages.sample import SampleSummary, _generate, plan_work

    started = time.time()
    run = open_run(load_recipe(recipe_for(samples, n, batch_size, root)))
    build_prompts(run)
    prompts = run.files.read_prompts("train")
    by_id = {p["prompt_id"]: p for p in prompts}
    teacher = SyntheticTeacher(by_id, batch_size, seed=samples)
    info = teacher.describe()
    summary = SampleSummary()
    record = {"round": 0, "attempt": 0, "requested": 0, "answered": 0, "duplicates": 0, "replicas": {},
              "error": None, "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    answered: set[str] = set()
    for lo in range(0, len(prompts), CHUNK_PROMPTS):
        work = plan_work(run.recipe, prompts[lo : lo + CHUNK_PROMPTS], done=set())
        record["requested"] += len(work)
        _generate(run, teacher, info, by_id, work, summary, None, True, set(), answered, record)
        answered.clear()  # work ids are unique across chunks; the set only guards one pass
    record["answered"] = summary.samples_new
    run.files.append_attempt(record)
    return {"run_dir": str(run.dir), "recipe": str(root / "recipe.yaml"), "samples": summary.samples_new,
            "prompts": len(prompts), "parts": len(run.files.sample_parts()), "seconds": time.time() - started}


class _Quiet:
    """A tracker that records nothing (the recipe disables wandb; this skips even its start-up)."""

    active = False

    def log(self, *args, **kwargs) -> None:
        pass

    summary = table = finish = log


class _NoTeacher:
    """The sample stage finds its work done: a request to the teacher is a bug in the bench."""

    def describe(self):
        raise RuntimeError("the sample stage asked the teacher: the synthetic run directory is incomplete")

    generate = describe


def step_side(step: str, recipe_path: str, store: str) -> dict:
    """Runs one step on a built run directory; returns its seconds, peak RSS and what it made."""
    from distill.pipeline import open_run
    from distill.recipe import load_recipe
    from distill.stages import Context

    run = open_run(load_recipe(recipe_path))
    ctx = Context(run, ["sample", "filter", "dataset", "report"], _Quiet(), make_backend=None,
                  teacher_backend_override=_NoTeacher())
    work, out = _step(step, run, ctx, store)
    _warm(step)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    result = work()
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": seconds, "peak_mb": peak / 1024, "step_mb": (peak - before) / 1024,
            "files": count_files(run.dir), **out(result)}


def _step(step: str, run, ctx, store: str):
    """(the timed call, what to report of its result) for a step; what the call needs is read first."""
    from distill.stages import dataset, report, sample
    from distill.stages import filter as filtering

    if step == "sample":
        return lambda: sample.run(ctx), lambda s: {"samples": s.samples_total, "accepted": s.accepted}
    if step == "compact":
        return lambda: run.files.compact_samples(), lambda merged: {"merged": merged}
    if step == "filter":
        return lambda: filtering.run(ctx), lambda s: {"candidates": s["candidates"], "kept": s["kept"]}
    if step.startswith("filter:"):
        from distill.filters import FILTERS, FilterContext

        spec = next(f for f in run.recipe.filters if f.name == step.split(":", 1)[1])
        rows = filtering.candidates(run.files)
        fctx = FilterContext(base_dir=run.recipe.base_dir, eval_prompts=run.files.read_prompts("eval"))
        fn = FILTERS.get(spec.name).fn
        return (lambda: fn(rows, spec.params, fctx),
                lambda verdicts: {"candidates": len(rows), "flagged": sum(v.flagged for v in verdicts)})
    if step == "dataset":
        return lambda: dataset.run(ctx), lambda m: {"rows": m["rows"], "dropped": m["dropped"]}
    if step == "lineage-register":
        from distill.lineage_store import open_store, register_run

        return lambda: register_run(open_store(store), run.dir), lambda added: {"added": added}
    if step == "lineage-query":
        from distill.lineage_store import descendants, open_store

        content = run.files.read_json(run.files.manifest)["content_sha256"]
        db = open_store(store)
        questions = [("teacher", run.teacher.id), ("licence", "apache-2.0"), ("dataset", content[:8])]
        return (lambda: [len(descendants(db, kind, key)) for kind, key in questions],
                lambda counts: {"rows": dict(zip([k for k, _ in questions], counts))})
    if step == "report":
        return lambda: report.run(ctx), lambda out: {"bytes": Path(out["report"]).stat().st_size}
    raise ValueError(step)


def _warm(step: str) -> None:
    """Imports and start-up a step pays once whatever the size, before the clock starts: the
    modules it imports on first use, and for near-dedup a local Ray (in a pipeline run the
    teacher's engines have started it) with one small Ray Data job done."""
    import matplotlib.pyplot  # noqa: F401
    import pyarrow.dataset  # noqa: F401
    from huggingface_hub import DatasetCard  # noqa: F401

    if step in ("filter", "filter:near-dedup"):
        from distill.filters import FilterContext
        from distill.filters.dedup import NearDedupParams, near_dedup
        from distill.ray_runtime import start_ray

        start_ray(None)
        near_dedup([{"sample_id": str(i), "completion": f"warm up {i} " * 8} for i in range(2_000)],
                   NearDedupParams(), FilterContext())


def count_files(root: Path) -> int:
    return sum(len(names) for _, _, names in os.walk(root))


def parse_sizes(text: str) -> list[int]:
    return [int(float(s)) for s in text.split(",") if s.strip()]


def run_step(*argv: str, max_rss_gb: float | None = None, tries: int = 2) -> dict:
    """A side in its own process (bench/sides.py's way) and process group. One that raised is run
    once more (a local Ray on a busy machine now and then loses a worker); one that still fails,
    or was killed, by the system or for going over `max_rss_gb`, is reported as failed and the
    bench goes on."""
    proc = subprocess.Popen([sys.executable, __file__, "--side", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    over = False
    while True:
        try:
            stdout, stderr = proc.communicate(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            if max_rss_gb and _rss_gb(proc.pid) > max_rss_gb:
                over = True
                os.killpg(proc.pid, signal.SIGKILL)  # the step and what it started (a local Ray)
    if over:
        return {"failed": f"killed: its RSS went over {max_rss_gb:g} GB (--max-rss-gb)"}
    line = next((x for x in stdout.splitlines() if x.startswith("BENCH ")), None)
    if line is not None and proc.returncode == 0:
        return json.loads(line[6:])
    if proc.returncode > 0 and tries > 1:
        return run_step(*argv, max_rss_gb=max_rss_gb, tries=tries - 1)
    lines = [x for x in stderr.splitlines() if x.strip()]
    errors = [x for x in lines if not x[0].isspace() and ("Error" in x or "Exception" in x)]
    return {"failed": f"exit {proc.returncode}: {(errors or lines or ['no output'])[-1][:300]}"}


def _rss_gb(pid: int) -> float:
    """A process's resident memory now (Linux); 0 where /proc cannot tell."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return int(found.group(1)) / 2**20 if found else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=SIZES, help=f"samples per run, comma-separated (default {SIZES})")
    ap.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "distill-scale"),
                    help="where the run directories and results.json go")
    ap.add_argument("--n", type=int, default=8, help="samples per prompt")
    ap.add_argument("--batch-size", type=int, default=64, help="samples per part (sampling.batch_size)")
    ap.add_argument("--steps", default=",".join(STEPS), help="the steps to time, comma-separated (default: all)")
    ap.add_argument("--max-rss-gb", type=float, help="kill a step whose process goes over this resident memory "
                                                     "(and report it failed), to spare the machine's other work")
    ap.add_argument("--side", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--recipe", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    args = ap.parse_args()
    out = Path(args.out)
    if args.side == "build":
        emit(build(args.size, args.n, args.batch_size, Path(args.recipe)))
        return
    if args.side:
        emit(step_side(args.side, args.recipe, args.store))
        return

    sizes, steps = parse_sizes(args.sizes), [s for s in args.steps.split(",") if s]
    if unknown := [s for s in steps if s not in STEPS]:
        sys.exit(f"unknown steps {unknown}; steps: {', '.join(STEPS)}")
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    print(f"{os.cpu_count()} CPUs, {memory:.0f} GiB RAM, load average {os.getloadavg()[0]:.1f} at start; "
          f"n={args.n} samples per prompt, {args.batch_size} samples per part as written")
    results: dict = {"sizes": sizes, "n": args.n, "batch_size": args.batch_size, "cpus": os.cpu_count(),
                     "memory_gib": round(memory, 1), "built": {}, "steps": {}}
    out.mkdir(parents=True, exist_ok=True)
    for size in sizes:
        root = out / f"{size}"
        if root.exists():
            if not (root / "recipe.yaml").is_file():
                sys.exit(f"{root} exists and was not made by this bench: give another --out")
            shutil.rmtree(root)
        root.mkdir(parents=True)
        built = run_step("build", "--size", str(size), "--recipe", str(root), "--n", str(args.n),
                         "--batch-size", str(args.batch_size), max_rss_gb=args.max_rss_gb)
        results["built"][size] = built
        if "failed" in built:
            print(f"\n{size:,}: building the run directory failed ({built['failed']})")
            continue
        print(f"\n{size:,}: wrote {built['samples']:,} samples of {built['prompts']:,} prompts in {built['parts']:,} "
              f"parts ({built['seconds']:.0f} s, not timed)")
        store = f"sqlite:///{root / 'lineage.sqlite'}"
        for step in steps:
            r = run_step(step, "--recipe", built["recipe"], "--store", store, max_rss_gb=args.max_rss_gb)
            results["steps"].setdefault(step, {})[size] = r
            (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")  # kept if a later size fails
            if "failed" in r:
                print(f"  {step:<24} failed: {r['failed']}")
                continue
            extra = {k: v for k, v in r.items() if k not in ("seconds", "peak_mb", "step_mb", "files")}
            print(f"  {step:<24} {r['seconds']:9.2f} s  peak {r['peak_mb']:7.0f} MB (+{r['step_mb']:.0f})  "
                  f"{r['files']:>8,} files  {json.dumps(extra)}")
    print()
    print(table(results))
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults: {out / 'results.json'}")


def table(results: dict) -> str:
    """step x size: seconds, peak MB (+ the step's own), files; and the time ratio of consecutive sizes."""
    sizes = results["sizes"]
    head = f"{'step':<24}" + "".join(f" | {_size(s):>6}: {'s':>8} {'peak MB':>8} {'+MB':>6} {'files':>8}"
                                     for s in sizes)
    head += "".join(f" | t {_size(b)}/{_size(a)}" for a, b in zip(sizes, sizes[1:]))
    lines = [head, "-" * len(head)]
    over = set()
    for step, by_size in results["steps"].items():
        row = f"{step:<24}"
        for s in sizes:
            r = by_size.get(s) or {"failed": "not run"}
            cell = (f"{r['seconds']:8.2f} {r['peak_mb']:8.0f} {r['step_mb']:6.0f} {r['files']:8,}" if "failed" not in r
                    else f"{'failed':>8} {'':>8} {'':>6} {'':>8}")
            row += f" | {'':>6}  {cell}"
        for a, b in zip(sizes, sizes[1:]):
            width = len(_size(a)) + len(_size(b)) + 1
            ra, rb = by_size.get(a, {}), by_size.get(b, {})
            if "seconds" not in ra or "seconds" not in rb:
                row += f" | {'-':>{width}} "
                continue
            ratio = rb["seconds"] / max(ra["seconds"], 1e-9)
            late = ratio > SLACK * b / a
            if late:
                over.add(step)
            row += f" | {ratio:>{width}.2f}{'!' if late else ' '}"
        lines.append(row)
    if len(sizes) > 1:
        lines.append(f"goal: each time ratio <= {SLACK:g} x the size ratio (11 for 10x); "
                     + (f"over it (!): {', '.join(sorted(over))}" if over else "every step within it"))
    return "\n".join(lines)


def _size(n: int) -> str:
    exp = len(str(n)) - 1
    return f"1e{exp}" if n == 10**exp else f"{n:,}"


if __name__ == "__main__":
    main()
