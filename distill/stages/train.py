"""Train: fine-tune the student on the kept samples (distill/training/ does the fitting).

`train.workers: 1` (the default) trains in this process; with more, under Ray Train
(distill/training/ray_train.py), every worker running the same fit. Checkpoints go to
`train/checkpoints/`; a rerun of a killed training resumes from the last complete one. The
driver writes `train/summary.json`, with the world size, the backend and what each rank trained on.

`train.method` picks the fit (distill/training/methods.py). dpo, sft+dpo and kto train on
preference data built here from the run's samples and dataset (distill/training/pairs.py):
dataset/pairs.parquet, or dataset/unpaired.parquet for kto; the summary records the rule and
what it found.
"""

from __future__ import annotations

from distill.stages.dataset import assistant_turn
from distill.training.methods import PAIRED, UNPAIRED, fit_for
from distill.training.pairs import describe, write_pairs
from distill.training.sft import last_checkpoint, weights_digest

NAME = "train"
NEEDS_STUDENT = True


def run(ctx) -> dict:
    out = train_student(ctx.run, ctx.bar("training"), report_to=["wandb"] if ctx.tracker.active else [])
    ctx.tracker.summary({k: out[k] for k in ("steps", "train_loss", "trained_tokens", "tokens_per_second")}, NAME)
    return out


def train_student(run, progress=None, report_to: list[str] | None = None) -> dict:
    """Trains (or resumes) the student; returns the training summary (also in train/summary.json)."""
    files = run.files
    if files.trained():
        return files.read_json(files.train_summary)

    recipe = run.recipe
    rows = files.read_dataset().num_rows
    if rows == 0:
        raise RuntimeError(
            f"{files.dataset_dir}: no kept samples to train on; manifest.json says what was dropped and why. "
            "Sample more prompts, raise sampling.n, or relax a verifier's threshold."
        )
    method = recipe.train.method
    pairs = None
    if method in PAIRED + UNPAIRED:
        if method == "sft+dpo" and recipe.train.workers > 1 and run.remote:
            raise RuntimeError("sft+dpo with train.workers > 1 needs a run directory every node shares (the DPO "
                               "phase starts from the SFT phase's model): set output_dir to a path every node "
                               "mounts, or use train.workers: 1")
        pairs = write_pairs(run, assistant_turn, unpaired=method in UNPAIRED)
        if (pairs["rows"] if method in UNPAIRED else pairs["pairs"]) == 0:
            raise RuntimeError(f"{method}: no preference pairs in this run's samples: {describe(pairs)}. A pair "
                               "needs an accepted sample and a failed one of the same prompt: raise sampling.n or "
                               "sampling.temperature, or use method: sft")
    base = recipe.student_base
    resume_from = last_checkpoint(files.checkpoints)
    if recipe.train.workers > 1:
        from distill.training.ray_train import fit_on_ray

        facts = fit_on_ray(run, base, resume_from, progress, report_to or [])
    else:
        facts = fit_for(method)(run, base, resume_from, progress, report_to or [])

    # Real tokens the loader fed the model in this process's training (every rank's): the speed's
    # numerator, and the whole count unless a resume skipped earlier steps (then the epochs' count;
    # trl_args.max_steps can end training before an epoch is through).
    # (Loader processes, trl_args.dataloader_num_workers, leave no count: then the epochs' count.)
    epochs_count = facts["tokens_per_epoch"] * recipe.train.epochs
    counted = all("tokens" in s for s in facts["shards"])
    fed = sum(s["tokens"] for s in facts["shards"]) if counted else epochs_count
    tokens = fed if resume_from is None else epochs_count
    summary = {
        "method": recipe.train.method,
        "weights": recipe.train.weights,
        "base": base.record(),
        "rows": rows,
        "epochs": recipe.train.epochs,
        "steps": facts["steps"],
        "resumed": resume_from is not None,
        "resumed_from": resume_from.name if resume_from else None,
        "workers": facts["world_size"],
        "backend": facts["backend"],  # torch.distributed's; None when one process trained alone
        "train_loss": facts["train_loss"],
        "trained_tokens": tokens,
        "seconds": facts["seconds"],
        "tokens_per_second": fed / facts["seconds"] if facts["seconds"] else 0.0,
        "weights_sha256": weights_digest(files.student_dir),
        # Per rank, what this run (after any resume) fed it; see training.sft._ShardTally.
        "data_shards": facts["shards"],
        "dataset_digest": facts["dataset_digest"],
        "log": facts["log"],
    }
    if pairs is not None:  # what the method trained on, and how it was chosen
        summary["unpaired" if method in UNPAIRED else "pairs"] = pairs
        pref = recipe.train.preference
        own_rate = {"learning_rate": pref.learning_rate} if pref.learning_rate else {}
        summary["preference"] = ({"beta": pref.beta, **own_rate} if method in UNPAIRED else {
            **pref.model_dump(exclude={"learning_rate"} | (set() if method == "sft+dpo" else {"sft_steps"})),
            **own_rate})
    for key in ("sft_phase", "kd", "on_policy"):  # the method's own parameters and inputs
        if key in facts:
            summary[key] = facts[key]
    files.write_json(files.train_summary, summary)
    return summary
