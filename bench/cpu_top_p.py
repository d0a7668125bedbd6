"""vLLM on CPU with vLLM's own top-p (a sort of the whole vocabulary every step) against
distill's plugin (partial sorts), on the demo teacher and the sampling stage's own requests.

Each side is plain `vllm.LLM.generate` in its own process, one after the other; only
DISTILL_VLLM_FAST_TOP_P differs (0: vLLM's function, 1: the plugin). Requests are seeded, so
both sides should write the same completions: the benchmark counts those that differ. Printed:
output tokens/s of generate alone (engine start left out) for each side, and the ratio.

    python bench/cpu_top_p.py [--prompts 64] [--n 4] [--max-tokens 128] [--top-p 0.95]
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import yaml
from sides import emit, plain_vllm, run_side, sampling_parser

RECIPE = {
    "name": "bench-top-p",
    "teacher": "smollm2-135m-instruct",
    "prompts": {"train": [{"source": "arithmetic", "count": 0, "seed": 11}]},
    "sampling": {"n": 0, "temperature": 0.8, "top_p": 0.0, "max_tokens": 0, "seed": 0},
    "verifiers": [{"name": "final-number"}],
}


def generate(recipe_path: str) -> dict:
    r = plain_vllm(recipe_path)
    texts = [o.outputs[0].text for o in r["outputs"]]
    return {"tokens": sum(len(o.outputs[0].token_ids) for o in r["outputs"]), "samples": len(texts),
            "seconds": r["done"] - r["generate_started"],
            "digests": [hashlib.sha256(t.encode()).hexdigest()[:16] for t in texts]}


def main() -> None:
    ap = sampling_parser(__doc__, ("vllm", "plugin"), prompts=64)
    ap.add_argument("--top-p", type=float, default=0.95)
    args = ap.parse_args()
    if args.side:
        emit(generate(args.recipe))
        return

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        recipe = json.loads(json.dumps(RECIPE))
        recipe["prompts"]["train"][0]["count"] = args.prompts
        recipe["sampling"].update(n=args.n, max_tokens=args.max_tokens, top_p=args.top_p)
        for side, flag in (("vllm", "0"), ("plugin", "1")):
            recipe["output_dir"] = str(Path(tmp) / side)
            path = Path(tmp) / f"{side}.yaml"
            path.write_text(yaml.safe_dump(recipe))
            os.environ["DISTILL_VLLM_FAST_TOP_P"] = flag  # the child's vLLM processes read it
            results[side] = run_side(__file__, side, "--recipe", str(path))

    v, p = results["vllm"], results["plugin"]
    v_tps, p_tps = v["tokens"] / v["seconds"], p["tokens"] / p["seconds"]
    differ = sum(a != b for a, b in zip(v["digests"], p["digests"]))
    print(f"workload: {args.prompts} prompts x n={args.n}, max_tokens={args.max_tokens}, top_p={args.top_p}, "
          "temperature 0.8, seeded, demo teacher, all requests at once")
    print(f"vLLM's top-p   : {v['samples']} samples, {v['tokens']} output tokens in {v['seconds']:.1f} s = {v_tps:.1f} tok/s")
    print(f"distill plugin : {p['samples']} samples, {p['tokens']} output tokens in {p['seconds']:.1f} s = {p_tps:.1f} tok/s")
    print(f"ratio (plugin / vLLM): {p_tps / v_tps:.2f}; completions that differ: {differ} of {len(v['digests'])}")


if __name__ == "__main__":
    main()
