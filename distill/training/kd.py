"""Logit distillation (`train.method: kd`): the student learns the teacher's next-token
distributions, not only its sampled tokens, from the top-k log-probabilities the sample stage
kept (`sampling.logprobs`, samples/logprobs/).

Each kept dataset row becomes one sequence: the prompt as the student's chat template renders
it, then the teacher's generated token ids exactly as the teacher sampled them, so position i of
the completion lines up with the teacher's stored distribution at i. (The ids, not the text
re-tokenised: a text can tokenise otherwise than it was generated.) A row whose completion a
filter rewrote (redacted) is left out: the teacher's tokens are the text before the rewrite.

The loss at each completion position is

    ce_weight x CE(student, sampled token) + (1 - ce_weight) x D(teacher || student)

where D compares two distributions over k + 1 buckets: the teacher's top-k ids, and one tail
bucket holding the rest of the vocabulary. The teacher's tail is 1 - the sum of its top-k
probabilities; the student's is exactly its probability of every other id. D is the forward KL
(teacher || student), the reverse KL, or the generalised Jensen-Shannon divergence with weight
`jsd_beta` (TRL's GKD convention: mixture = beta x teacher + (1 - beta) x student). The
temperature divides the student's logits and the teacher's bucket log-probabilities (then
normalised again over the k + 1 buckets); the cross-entropy is taken at temperature 1. At
temperature 1 both sides are exact; above it the teacher's tail is softened as one bucket,
since its tokens were not kept.

A plain transformers Trainer with its own collator and `compute_loss`; checkpoints, resume,
progress, tracking and saving the student are SFT's (distill/training/sft.py). The student must
number tokens as the teacher does: the recipe check compares the vocabularies, and every stored
id must fit the student's.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from pathlib import Path

from distill.models import StudentBase
from distill.training import logits as stored
from distill.training.config import lora_config, sft_config_kwargs
from distill.training.sft import (RowTokens, _Progress, has_tools, load_student, quiet_libraries, train_and_save)

# The smallest tail the teacher's distribution keeps: its top-k may cover all the mass (and the
# stored log-probabilities, rounded, may sum a little over 1).
TAIL_FLOOR = 1e-6
# The student's tail, in log space, is kept above this: finite even when its top-k hold everything.
STUDENT_LOG_TAIL_FLOOR = -80.0

STORED = ("k", "tokens", "id_bytes", "token_ranks", "token_ids", "token_logprobs", "top_ids", "top_logprobs")
KD_ROWS = RowTokens(("input_ids",), lambda row: row["input_ids"],
                    lambda dataset: sum(len(ids) for ids in dataset["input_ids"]))


# -- the loss ---------------------------------------------------------------------------------

def teacher_buckets(top_logprobs, temperature: float = 1.0):
    """The teacher's log-probabilities over its top-k plus the tail bucket, [N, k+1]: the tail is
    1 - the top-k's mass (at least TAIL_FLOOR), all normalised again, then softened."""
    import torch

    top = top_logprobs.float()
    tail = (1.0 - top.exp().sum(-1, keepdim=True)).clamp(min=TAIL_FLOOR)
    buckets = torch.cat([top, tail.log()], dim=-1)
    return torch.log_softmax(buckets / temperature, dim=-1)


def student_buckets(logits, top_ids, temperature: float = 1.0):
    """The student's log-probabilities over the teacher's top-k ids plus the tail bucket (every
    other id), [N, k+1], from its logits [N, V] at `temperature`."""
    import torch

    z = logits.float() / temperature
    log_norm = torch.logsumexp(z, dim=-1, keepdim=True)
    top = z.gather(-1, top_ids) - log_norm
    rest = z.scatter(-1, top_ids, float("-inf"))
    tail = (torch.logsumexp(rest, dim=-1, keepdim=True) - log_norm).clamp(min=STUDENT_LOG_TAIL_FLOOR)
    return torch.cat([top, tail], dim=-1)


def divergence(teacher, student, kind: str = "forward_kl", beta: float = 0.5):
    """Per position [N]: between two log-distributions [N, B] over the same buckets."""
    import torch

    if kind == "forward_kl":
        return (teacher.exp() * (teacher - student)).sum(-1)
    if kind == "reverse_kl":
        return (student.exp() * (student - teacher)).sum(-1)
    if kind == "jsd":
        mixture = torch.logsumexp(torch.stack([teacher + math.log(beta), student + math.log1p(-beta)]), dim=0)
        return beta * (teacher.exp() * (teacher - mixture)).sum(-1) \
            + (1 - beta) * (student.exp() * (student - mixture)).sum(-1)
    raise ValueError(f"unknown divergence {kind!r}: forward_kl, reverse_kl or jsd")


def kd_loss(logits, targets, top_ids, top_logprobs, kind: str = "forward_kl", beta: float = 0.5,
            ce_weight: float = 0.5, temperature: float = 1.0):
    """The mean over N completion positions of ce_weight x CE + (1 - ce_weight) x D; returns
    (loss, mean CE, mean D). logits [N, V], targets [N] (the sampled ids), top_ids and
    top_logprobs [N, k] (the teacher's)."""
    import torch

    z = logits.float()
    ce = torch.logsumexp(z, dim=-1) - z.gather(-1, targets[:, None]).squeeze(-1)
    d = divergence(teacher_buckets(top_logprobs, temperature), student_buckets(z, top_ids, temperature), kind, beta)
    loss = (ce_weight * ce + (1 - ce_weight) * d).mean()
    return loss, ce.mean().detach(), d.mean().detach()


# -- the data ---------------------------------------------------------------------------------

def kd_rows(run, tokenizer, vocab_size: int, max_length: int) -> tuple[list[dict], dict]:
    """The training rows (prompt ids + the teacher's generated ids, with the stored arrays), in
    dataset order, and what was read and left out (the summary's record). Raises when kept rows
    have no stored log-probabilities, or ids the student does not have."""
    from distill.prompts.conversation import template_messages

    files = run.files
    dataset = files.read_dataset().to_pylist()
    wanted = {r["sample_id"] for r in dataset}
    records, parts = files.read_logprobs(wanted)
    rewritten = _rewritten(run, wanted)
    rows, skipped, missing = [], Counter(), []
    digest = hashlib.sha256()
    for r in dataset:
        sid = r["sample_id"]
        if sid in rewritten:
            skipped["completion rewritten by a filter"] += 1
            continue
        record = records.get(sid)
        if record is None:
            missing.append(sid)
            continue
        if record["tokens"] == 0:
            skipped["empty completion"] += 1
            continue
        turns = template_messages([{k: v for k, v in m.items() if v is not None} for m in r["prompt"]])
        text = tokenizer.apply_chat_template(turns, tools=json.loads(r["tools"]) if r.get("tools") else None,
                                             add_generation_prompt=True, tokenize=False)
        prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
        room = max_length - len(prompt)
        if room < 1:
            skipped["prompt longer than train.max_length"] += 1
            continue
        teacher = stored.decode(record)
        biggest = max(int(teacher.token_ids.max()), int(teacher.top_ids.max()))
        if biggest >= vocab_size:
            raise RuntimeError(f"sample {sid}: the teacher's token id {biggest} is beyond the student's vocabulary "
                               f"({vocab_size} ids): kd needs a student with the teacher's tokenizer")
        keep = min(teacher.n, room)
        rows.append({"input_ids": prompt + teacher.token_ids[:keep].tolist(), "prompt_length": len(prompt),
                     **{key: record[key] for key in STORED}})
        digest.update(stored.row_digest(record))
    if missing:
        raise RuntimeError(
            f"{len(missing)} of {len(dataset)} dataset rows have no stored teacher log-probabilities (e.g. sample "
            f"{missing[0]}); kd needs them for every row. They are kept with sampling.logprobs by a vLLM teacher, or "
            "a served one that returns token ids (vLLM's return_tokens_as_token_ids); samples made without it must "
            "be made again")
    if not rows:
        raise RuntimeError(f"kd: no dataset row to train on ({dict(skipped)})")
    record = {"rows": len(rows), "positions": sum(len(r["input_ids"]) - r["prompt_length"] for r in rows),
              "skipped": dict(sorted(skipped.items())),
              "logprobs": {"files": files.relative(*parts), "sha256": digest.hexdigest()}}
    return rows, record


def _rewritten(run, sample_ids: set[str]) -> set[str]:
    """The samples whose kept text a filter changed (a redaction): their stored tokens are the old text."""
    decisions = run.files.read_decisions()
    if not decisions:
        return set()
    samples = run.files.read_samples(["sample_id", "completion"]).to_pylist()
    return {s["sample_id"] for s in samples if s["sample_id"] in sample_ids
            and s["sample_id"] in decisions and decisions[s["sample_id"]]["completion"] != s["completion"]}


class KDCollator:
    """Pads a batch of kd rows on the right and lays the teacher's arrays beside it: `kd_targets`
    [B, T] holds, at each position that predicts a completion token, that token (-100 elsewhere);
    `kd_top_ids` / `kd_top_logprobs` [N, k] the teacher's top-k at those N positions, row by row."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict:
        import numpy as np
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        targets = torch.full((len(rows), width), -100, dtype=torch.long)
        top_ids, top_logprobs = [], []
        for b, r in enumerate(rows):
            n_ids, start = len(r["input_ids"]), r["prompt_length"]
            row = torch.tensor(r["input_ids"], dtype=torch.long)
            ids[b, :n_ids], mask[b, :n_ids] = row, 1
            # position p predicts token p + 1: the completion's tokens from position start - 1 on
            targets[b, start - 1:n_ids - 1] = row[start:]
            teacher = stored.decode(r)
            top_ids.append(teacher.top_ids[:n_ids - start])
            top_logprobs.append(teacher.top_logprobs[:n_ids - start])
        return {"input_ids": ids, "attention_mask": mask, "kd_targets": targets,
                "kd_top_ids": torch.from_numpy(np.concatenate(top_ids)),
                "kd_top_logprobs": torch.from_numpy(np.concatenate(top_logprobs))}


def _trainer_class():
    from transformers import Trainer

    class KDTrainer(Trainer):
        """A Trainer whose loss is `kd_loss` on the completion positions; the logits of the positions
        before the batch's first completion token are never computed."""

        loss_is_scaled_for_ga = False  # a per-batch mean: the Trainer divides it by the accumulation steps

        def __init__(self, *args, kd, **kwargs):
            super().__init__(*args, **kwargs)
            self.kd = kd
            self.model_accepts_loss_kwargs = False
            self._parts: list[tuple[float, float]] = []

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            targets = inputs["kd_targets"]
            selected = targets != -100
            first = int(selected.any(0).nonzero()[0])  # the batch's first position that predicts a completion token
            out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                        logits_to_keep=targets.shape[1] - first, use_cache=False)
            logits = out.logits[selected[:, first:]]
            loss, ce, d = kd_loss(logits, targets[selected], inputs["kd_top_ids"], inputs["kd_top_logprobs"],
                                  self.kd.divergence, self.kd.jsd_beta, self.kd.ce_weight, self.kd.temperature)
            self._parts.append((float(ce), float(d)))
            return (loss, out) if return_outputs else loss

        def log(self, logs, *args, **kwargs):
            if self._parts and "loss" in logs:  # the two terms, averaged since the last log
                logs = {**logs, "kd_ce": sum(p[0] for p in self._parts) / len(self._parts),
                        "kd_divergence": sum(p[1] for p in self._parts) / len(self._parts)}
                self._parts = []
            return super().log(logs, *args, **kwargs)

    return KDTrainer


# -- the fit ----------------------------------------------------------------------------------

def fit(run, base: StudentBase, resume_from: Path | None, progress=None, report_to: list[str] = (),
        on_log=None, callbacks: list = ()) -> dict:
    """Trains the student on the teacher's stored top-k log-probabilities, in this process or as
    one rank of a Ray Train worker group; rank 0 writes student/. Returns SFT's facts, plus `kd`:
    the settings, the rows and positions trained on, what was left out and why, and which
    log-probability files were read with a digest of the rows used (for the train summary)."""
    quiet_libraries()
    import gc

    import datasets
    from trl import SFTConfig

    recipe = run.recipe
    kd = recipe.train.kd
    model, tokenizer = load_student(base.path, recipe, has_tools(run.files.read_dataset()))
    vocab = model.get_output_embeddings().weight.shape[0]
    rows, record = kd_rows(run, tokenizer, vocab, recipe.train.max_length)
    args = {**sft_config_kwargs(run, run.files.checkpoints, list(report_to)),
            "packing": False,  # each row is one sequence, position for position with the teacher's arrays
            "remove_unused_columns": False}  # the collator reads the stored arrays
    if recipe.train.weights == "lora":
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(recipe.train))
        if args.get("gradient_checkpointing"):
            model.enable_input_require_grads()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    trainer = _trainer_class()(
        model=model, args=SFTConfig(**args), train_dataset=datasets.Dataset.from_list(rows),
        data_collator=KDCollator(pad), processing_class=tokenizer, callbacks=[_Progress(progress, on_log), *callbacks],
        kd=kd)
    del model, rows
    facts = train_and_save(trainer, tokenizer, run, base, resume_from, run.files.student_dir, KD_ROWS)
    facts["kd"] = {"k": recipe.sampling.logprobs, "divergence": kd.divergence, "ce_weight": kd.ce_weight,
                   "temperature": kd.temperature, **({"jsd_beta": kd.jsd_beta} if kd.divergence == "jsd" else {}),
                   **record}
    del trainer
    gc.collect()
    return facts
