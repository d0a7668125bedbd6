"""Each side of a benchmark runs in its own process, one after the other, so the sides never
share cores or memory; a side prints one `BENCH {json}` line that the parent reads."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def emit(result: dict) -> None:
    print("BENCH " + json.dumps(result))


def run_side(script: str, side: str, *argv: str) -> dict:
    proc = subprocess.run([sys.executable, script, "--side", side, *argv], capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH ")), None)
    if proc.returncode or line is None:
        sys.exit(f"{side} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(line[6:])


def plain_vllm(recipe_path: str) -> dict:
    """The sampling stage's requests for a recipe, through `vllm.LLM.generate` in this process
    with the engine settings the factory's actor gets. Returns the outputs and three clocks:
    before importing vllm, before generate, after it."""
    import os
    import time

    from distill.backends.vllm_ray import cpu_engine_env, engine_kwargs
    from distill.pipeline import open_run
    from distill.recipe import load_recipe
    from distill.stages.prompts import build_prompts
    from distill.stages.sample import plan_work
    from distill.teachers import model_path

    recipe = load_recipe(recipe_path)
    run = open_run(recipe)
    build_prompts(run)
    work = plan_work(recipe, run.files.read_prompts("train"), done=set())
    os.environ.update(cpu_engine_env())
    started = time.time()  # before importing vllm: the factory's engine actor pays that import too
    from vllm import LLM, SamplingParams

    llm = LLM(model=model_path(run.teacher), **engine_kwargs(run.teacher, recipe.teacher.engine_args, recipe.sampling.seed))
    tok = llm.get_tokenizer()
    prompts = [tok.apply_chat_template(w["messages"], tokenize=False, add_generation_prompt=True) for w in work]
    params = [SamplingParams(**w["sampling_params"]) for w in work]
    generate_started = time.time()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    return {"outputs": outputs, "started": started, "generate_started": generate_started, "done": time.time()}


def sampling_parser(doc: str, sides: tuple[str, str], prompts: int) -> argparse.ArgumentParser:
    """The arguments of a sampling benchmark: its workload, and the hidden ones a side gets."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=prompts)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--side", choices=list(sides), help=argparse.SUPPRESS)
    ap.add_argument("--recipe", help=argparse.SUPPRESS)
    return ap
