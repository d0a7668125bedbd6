"""The factory's sampling stage against plain `vllm.LLM.generate`, same model and prompts.

Each side runs in its own process, one after the other, so neither shares cores or memory
with the other. Both are timed end to end as a user waits for them: the baseline from
importing vllm and constructing `vllm.LLM` to the last output, the factory from `run_pipeline` to the last
written sample (Ray start, engine start, chat template, verification and Parquet writes
included). The baseline's generate-only rate is printed too. A third side runs the factory with
`sampling.reproducible: true` (the engine step loop on a CPU): what reproducible samples cost.

    python bench/sampling_overhead.py [--prompts 128] [--n 4] [--max-tokens 128]
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import yaml
from sides import emit, plain_vllm, run_side, sampling_parser

RECIPE = {
    "name": "bench-sampling",
    "teacher": "smollm2-135m-instruct",
    "prompts": {"train": [{"source": "arithmetic", "count": 0, "seed": 11}]},
    "sampling": {"n": 0, "temperature": 0.8, "top_p": 0.95, "max_tokens": 0, "seed": 0, "batch_size": 64},
    "verifiers": [{"name": "final-number"}],
}


def factory(recipe_path: str) -> dict:
    from distill.pipeline import run_pipeline
    from distill.recipe import load_recipe

    started = time.time()
    run, summaries = run_pipeline(load_recipe(recipe_path), until="sample")
    seconds = time.time() - started
    s = summaries["sample"]
    return {"tokens": s.completion_tokens_new, "seconds": seconds, "samples": s.samples_new}


def baseline(recipe_path: str) -> dict:
    """The same requests the factory sends, through vllm.LLM in this process."""
    r = plain_vllm(recipe_path)
    tokens = sum(len(o.outputs[0].token_ids) for o in r["outputs"])
    return {"tokens": tokens, "seconds": r["done"] - r["started"], "generate_seconds": r["done"] - r["generate_started"],
            "samples": len(r["outputs"])}


def main() -> None:
    ap = sampling_parser(__doc__, ("factory", "baseline", "reproducible"), prompts=128)
    args = ap.parse_args()
    if args.side:  # a child process: run one side, print its numbers as JSON
        emit(baseline(args.recipe) if args.side == "baseline" else factory(args.recipe))
        return

    with tempfile.TemporaryDirectory() as tmp:
        recipe = json.loads(json.dumps(RECIPE))
        recipe["prompts"]["train"][0]["count"] = args.prompts
        recipe["sampling"].update(n=args.n, max_tokens=args.max_tokens)
        results = {}
        for side in ("baseline", "factory", "reproducible"):
            recipe["output_dir"] = str(Path(tmp) / side)  # fresh run directories: nothing to resume
            recipe["sampling"]["reproducible"] = side == "reproducible"
            path = Path(tmp) / f"{side}.yaml"
            path.write_text(yaml.safe_dump(recipe))
            results[side] = run_side(__file__, side, "--recipe", str(path))

    b, f, r = results["baseline"], results["factory"], results["reproducible"]
    b_tps, f_tps = b["tokens"] / b["seconds"], f["tokens"] / f["seconds"]
    print(f"workload: {args.prompts} prompts x n={args.n}, max_tokens={args.max_tokens}, demo teacher")
    print(f"baseline vllm.LLM.generate : {b['samples']} samples, {b['tokens']} output tokens in {b['seconds']:.1f} s "
          f"= {b_tps:.1f} tok/s end to end ({b['tokens'] / b['generate_seconds']:.1f} tok/s in generate alone)")
    print(f"distill sampling stage     : {f['samples']} samples, {f['tokens']} output tokens in {f['seconds']:.1f} s "
          f"= {f_tps:.1f} tok/s end to end")
    print(f"distill, reproducible      : {r['samples']} samples, {r['tokens']} output tokens in {r['seconds']:.1f} s "
          f"= {r['tokens'] / r['seconds']:.1f} tok/s end to end")
    print(f"ratio (distill / baseline, end to end): {f_tps / b_tps:.3f}   target >= 0.95")
    print(f"ratio (reproducible distill / baseline, end to end): {r['tokens'] / r['seconds'] / b_tps:.3f}")


if __name__ == "__main__":
    main()
