"""Card: the student's Hugging Face model card and lineage.json, from the run directory alone.

Everything on the card is read from files the run wrote (recipe.resolved.yaml,
dataset/manifest.json, train/summary.json, eval.json, student/distill.json), so
`distill card RUN_DIR` rebuilds the same card on any machine, with or without the recipe.
"""

from __future__ import annotations

from pathlib import Path

from distill.lineage import dataset_name
from distill.run import RunDir
from distill.stages.dataset import tool_use_lines

NAME = "card"
NEEDS_STUDENT = True

# Hub licence ids the hub knows; anything else is written as `other` plus a name and a link.
HUB_LICENCES = {
    "apache-2.0", "mit", "bsd-3-clause", "cc-by-4.0", "cc-by-sa-4.0", "cc-by-nc-4.0", "openrail", "llama2",
    "llama3", "llama3.1", "llama3.2", "llama3.3", "llama4", "gemma", "odc-by", "other",
}


# Prompt sources that are published benchmarks, not generators or the user's own data.
EXTERNAL_BENCHMARKS = {"bfcl"}


def run(ctx) -> dict:
    return {"card": str(write_card(ctx.run.dir))}


def read_run(run_dir: Path) -> dict:
    """What the card needs, from the run directory; says which file is missing."""
    files = RunDir(run_dir)
    required = (files.resolved_recipe, files.manifest, files.train_summary, files.student_meta)
    missing = files.relative(*(f for f in required if not f.is_file()))
    if missing:
        raise FileNotFoundError(
            f"{files.root}: not a finished distill run (missing {', '.join(missing)}); "
            "run the recipe through the train stage first: distill run RECIPE"
        )
    return {
        "resolved": files.read_resolved(),
        "manifest": files.read_json(files.manifest),
        "train": files.read_json(files.train_summary),
        "student": files.read_json(files.student_meta),
        "eval": files.read_json(files.metrics),
        "licence": files.read_json(files.licence),
    }


def licence_of(info: dict) -> dict:
    """The student's licence and obligations, as the licence engine decided them for the run
    (licence.json). A run made before the engine existed falls back to the base model's
    licence, marked pending."""
    decision = info.get("licence")
    if decision and decision.get("student_licence"):
        s = decision["student_licence"]
        out = {"license": s["license"], "derived_by": "the distill licence engine", "citation": s["citation"],
               "governed_by": s["governed_by"], "verdict": decision["verdict"],
               "name_prefix": decision["name_prefix"], "non_commercial": decision["non_commercial"],
               "obligations": [_obligation_line(o) for o in decision["obligations"]],
               "acknowledged": [f"{a['rule']}: {a['reason']}" for a in decision["acknowledged"]]}
        for key in ("license_name", "license_link"):
            if s.get(key):
                out[key] = s[key]
        return out
    base = info["train"]["base"]
    lic = base["licence"]
    out = {"license": lic if lic in HUB_LICENCES else "other", "obligations": [], "derived_by": "pending"}
    if lic not in HUB_LICENCES:
        out["license_name"] = lic
        out["license_link"] = f"https://huggingface.co/{base['model']}"
    return out


def _obligation_line(o: dict) -> str:
    shown = "".join([f' "{o["text"]}"' if o.get("text") else "", f" <{o['url']}>" if o.get("url") else ""])
    return f"{o['what']}{shown} ({o['citation']})"


def lineage(run_dir: Path, info: dict | None = None) -> dict:
    """The student's lineage record: base, teachers, dataset, licences, training, code."""
    info = info or read_run(run_dir)
    r, m, t = info["resolved"], info["manifest"], info["train"]
    recipe = r["recipe"]
    return {
        "model": {"name": recipe["student"]["name"], "revision": t["weights_sha256"], "params_b": info["student"]["params_b"]},
        "base_model": t["base"] | {"path": None},
        "teachers": m["teachers"],
        "dataset": {"name": dataset_name(r, m), "content_sha256": m["content_sha256"], "rows": m["rows"],
                    "prompt_licences": m["prompt_licences"]},
        "licence": licence_of(info),
        "training": {"method": t["method"], "epochs": t["epochs"], "steps": t["steps"], "train_loss": t["train_loss"],
                     "config": recipe["train"],
                     # Beyond the dataset: the preference pairs' samples, the teacher log-probabilities read.
                     **{k: t[k] for k in ("pairs", "unpaired", "kd", "on_policy", "sft_phase") if k in t}},
        "recipe_hash": r["recipe_hash"],
        "run_id": r["run_id"],
        "code_version": r["code_version"],
    }


def model_card(run_dir: Path) -> str:
    """The card text (front matter + body)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    info = read_run(run_dir)
    lin = lineage(run_dir, info)
    recipe = info["resolved"]["recipe"]
    ev = info["eval"]
    lic = lin["licence"]
    name = lin["model"]["name"]
    results = []
    if ev:
        for metric, value in (("pass@1", ev["student"]["pass@1"]), ("greedy_accuracy", ev["student"]["greedy_accuracy"])):
            results.append(EvalResult(
                task_type="text-generation", dataset_type=f"{recipe['name']}-held-out", dataset_name=f"{recipe['name']} held-out prompts",
                dataset_split="eval", metric_type=metric, metric_value=round(value, 4),
                metric_name=f"{metric} ({', '.join(ev['verifiers'])})"
            ))
        for label, probe in (ev.get("probes") or {}).items():  # what the student lost or inherited
            for metric, row in probe["metrics"].items():
                if (row.get("student") or {}).get("value") is not None:
                    results.append(EvalResult(
                        task_type="text-generation", dataset_type=f"distill-probe-{probe['probe']}", dataset_name=label,
                        dataset_split="probe", metric_type=metric, metric_value=round(row["student"]["value"], 4),
                        metric_name=f"{metric} ({probe['items']} items)"))
        for group, g in (ev.get("groups") or {}).items():  # per held-out set: bfcl/simple_python, ...
            results.append(EvalResult(
                task_type="text-generation", dataset_type=group.replace("/", "-"), dataset_name=group,
                dataset_split="eval", metric_type="pass@1", metric_value=round(g["student"]["pass@1"], 4),
                metric_name=f"pass@1 ({', '.join(ev['verifiers'])})"))
    data = ModelCardData(
        model_name=name,
        license=lic["license"],
        license_name=lic.get("license_name"),
        license_link=lic.get("license_link"),
        base_model=lin["base_model"]["model"],
        base_model_relation="finetune",
        datasets=[lin["dataset"]["name"]],
        tags=["distillation", "synthetic-data", "distill", "trl", "sft"] + (["tool-calling"] if info["manifest"].get("tool_use") else []),
        library_name="transformers",
        pipeline_tag="text-generation",
        eval_results=results or None,
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{_body(info, lin)}").content


def _groups_text(ev: dict) -> list[str]:
    """The per-set table: each held-out source and category, teacher and student pass@1."""
    if not ev.get("groups"):
        return []
    lines = ["", "By held-out set (pass@1, 95% interval in brackets):", "",
             "| held-out set | prompts | teacher | student | change |", "|---|---|---|---|---|"]
    for name, g in ev["groups"].items():
        t, s = g["teacher"], g["student"]
        ci = lambda m: f" ({m['pass@1_ci95'][0]:.1%}-{m['pass@1_ci95'][1]:.1%})" if m.get("pass@1_ci95") else ""  # noqa: E731
        lines.append(f"| {name} | {g['prompts']} | {t['pass@1']:.1%}{ci(t)} | {s['pass@1']:.1%}{ci(s)} "
                     f"| {s['pass@1'] - t['pass@1']:+.1%} |")
    return lines


def _pct(m: dict | None, key: str = "value", ci: str = "ci95") -> str:
    if not m or m.get(key) is None:
        return "-"
    interval = m.get(ci)
    return f"{m[key]:.1%}" + (f" ({interval[0]:.0%}-{interval[1]:.0%})" if interval else "")


def comparison_rows(ev: dict) -> list[list[str]]:
    """The task score and every probe's metrics for teacher, base and student, with the change
    from base to student: [what, teacher, base, student, change]. Empty without probes or base."""
    if "base" not in ev and not ev.get("probes"):
        return []
    rows = []
    for key, label in (("pass@1", "task pass@1"), ("greedy_accuracy", "task greedy accuracy")):
        cells = [_pct(ev.get(role), key, f"{key}_ci95") for role in ("teacher", "base", "student")]
        change = (ev.get("student_minus_base") or {}).get(key)
        rows.append([label, *cells, "-" if change is None else f"{change * 100:+.1f} pts"])
    for name, probe in (ev.get("probes") or {}).items():
        if probe.get("error"):
            rows.append([f"{name}: skipped", "-", "-", "-", probe["error"]])
            continue
        for metric, row in probe["metrics"].items():
            arrow = "higher is better" if row["better"] == "higher" else "lower is better"
            change = row.get("student_minus_base")
            rows.append([f"{name} {metric} ({arrow}; {probe['items']} items)",
                         *[_pct(row.get(role)) for role in ("teacher", "base", "student")],
                         "-" if change is None else f"{change * 100:+.1f} pts"])
    return rows


def skipped_lines(ev: dict) -> list[str]:
    """What the probes left out, and why."""
    lines = []
    for name, probe in (ev.get("probes") or {}).items():
        for reason, n in (probe.get("skipped_reasons") or {}).items():
            lines.append(f"{name}: {n} of {probe['total']} items skipped: {reason}")
    return lines


def _comparison_text(ev: dict) -> list[str]:
    rows = comparison_rows(ev)
    if not rows:
        return []
    base_note = " (the teacher's own model: the same answers)" if (ev.get("base") or {}).get("same_as_teacher") else ""
    lines = ["", f"### What changed from the base model{base_note}", "",
             "Task score and probes, each model answering with the same sampling settings; in brackets 95% intervals "
             "by bootstrap over prompts:", "",
             "| | teacher | base | student | student - base |", "|---|---|---|---|---|"]
    lines += [f"| {' | '.join(r)} |" for r in rows]
    if skipped := skipped_lines(ev):
        lines += ["", *[f"- {x}" for x in skipped]]
    return lines


def gate_text(gate: dict | None) -> str:
    """The gate's decision for the card: held at the top with every failed condition."""
    if not gate:
        return ""
    if gate["decision"] == "held":
        failed = "\n".join(f"> - {m}" for m in gate["failed"])
        return f"> **Held by the promotion gate: do not deploy this model as is.** Failed conditions:\n{failed}\n"
    return f"Promoted by the gate: every condition held ({', '.join(c['rule'] for c in gate['conditions'])}).\n"


def _body(info: dict, lin: dict) -> str:
    r = info["resolved"]
    recipe, m, t, ev = r["recipe"], info["manifest"], info["train"], info["eval"]
    teachers = "\n".join(f"| teacher | {x['model']} | {x['revision']} | {x['licence']} |" for x in lin["teachers"])
    base = lin["base_model"]
    prompt_lic = ", ".join(f"{k} ({v} rows)" for k, v in m["prompt_licences"].items()) or "none"
    lic = lin["licence"]
    if lic["derived_by"] == "pending":
        licence_text = (f"`{lic['license']}`, the base model's licence. The derivation from every source's terms "
                        "(teachers, base model, prompt sets) by distill's licence engine is pending: check each "
                        "teacher's terms on the use of its outputs before you publish this model.")
    else:
        licence_text = (f"`{lic['license']}`" + (f" ({lic['license_name']})" if lic.get("license_name") else "")
                        + f", derived by {lic['derived_by']} from the terms of every source "
                        f"(teachers, base model, prompt sets): {lic['citation']}.")
        if lic.get("name_prefix"):
            licence_text += f"\n\nThe model's name must begin with \"{lic['name_prefix']}\"."
        if lic.get("non_commercial"):
            licence_text += "\n\n**Non-commercial use only.**"
        if lic.get("acknowledged"):
            licence_text += "\n\nRefusals overridden by an explicit acknowledgement in the recipe:\n" + "\n".join(
                f"- {a}" for a in lic["acknowledged"])
    obligations = "\n".join(f"- {o}" for o in lic["obligations"]) or "- none recorded"
    v = ", ".join(f"`{x['name']}`" for x in recipe["verifiers"]) or "none"
    s = recipe["sampling"]
    if ev:
        te, st = ev["teacher"], ev["student"]

        def row(label, key, fmt):
            def cell(m):
                ci = m.get(f"{key}_ci95")
                return fmt(m[key]) + (f" ({ci[0]:.1%}-{ci[1]:.1%})" if ci else "")

            return f"| {label} | {cell(te)} | {cell(st)} |"

        pct = lambda x: f"{x:.1%}"  # noqa: E731
        eval_text = "\n".join([
            f"{ev['held_out_prompts']} held-out prompts never used in training; {ev['k']} sampled answers per prompt "
            f"with the training sampling settings, plus one greedy answer; scored by {v}.",
            "",
            f"| metric | teacher ({te['model']}) | student ({st['model']}) |",
            "|---|---|---|",
            row("pass@1", "pass@1", pct), row(f"pass@{ev['k']}", "pass@k", pct),
            row("greedy accuracy", "greedy_accuracy", pct),
            row("mean output tokens", "mean_output_tokens", lambda x: f"{x:.1f}"),
            f"| cost per correct answer | {cost_text(te)} | {cost_text(st)} |",
            "",
            "In brackets: 95% intervals, by bootstrap over the held-out prompts.",
            f"Cost unit: {st['price_unit']}." if te["price_unit"] == st["price_unit"]
            else f"Cost unit: teacher {te['price_unit']}; student {st['price_unit']}.",
        ] + _groups_text(ev) + _comparison_text(ev) + (["", gate_text(ev.get("gate"))] if ev.get("gate") else []))
    else:
        eval_text = "Not evaluated yet (the evaluate stage has not run)."
    held = gate_text(ev.get("gate")) if ev and (ev.get("gate") or {}).get("decision") == "held" else ""
    return f"""
# {lin['model']['name']}

{held}
A small model distilled by distill from a teacher's verified answers:
the teacher sampled {s['n']} answers per training prompt, the verifiers kept the right ones,
and the base model was fine-tuned on them with {METHOD_TEXT.get(t.get("method", "sft"), t.get("method"))}.

## Lineage

| role | model | revision | licence |
|---|---|---|---|
{teachers}
| base model | {base['model']} | {base['revision']} | {base['licence']} |

- training data: `{lin['dataset']['name']}`, {m['rows']} rows kept of {m['samples']} samples
  (content sha256 `{m['content_sha256']}`); prompt licences: {prompt_lic}
- recipe hash `{r['recipe_hash']}`, run `{r['run_id']}`, distill {r['code_version']}
- weights sha256 `{t['weights_sha256']}`

## How it was made

1. Teacher sampling: temperature {s['temperature']}, top-p {s['top_p']}, max {s['max_tokens']} tokens, {s['n']} per prompt, seeded per sample.
   {reproducibility_text(s)}
2. Verification: {v}; a sample is kept when every required verifier accepts it; exact duplicates removed
   (dropped: {', '.join(f'{k} {n}' for k, n in m['dropped'].items()) or 'none'}).
3. Training: {t.get('method', 'sft')}, {t.get('weights', t['method'])} weights, {t['epochs']} epoch(s), {t['steps']} steps, learning rate
   {recipe['train']['learning_rate']}, loss on the completion only; final training loss {t['train_loss']:.4f}.{method_params(t)}

{tool_use_lines(m.get("tool_use"), "Tools and formats it was trained for")}
## Evaluation against the teacher

{eval_text}

## Licence

{licence_text}

Obligations:
{obligations}

## Limitations

- Trained for one narrow task ({recipe['name']}); outside it the student is no better than its base model, often worse.
- It learned only from answers its verifiers accepted: whatever they cannot check (reasoning quality, style,
  safety) was not selected for.
- {_eval_scope(ev)}
"""


# How each train.method learns, for the card's first paragraph.
METHOD_TEXT = {
    "sft": "supervised fine-tuning (TRL `SFTTrainer`)",
    "full": "supervised fine-tuning (TRL `SFTTrainer`)",  # summaries written before train.weights
    "lora": "supervised fine-tuning of a LoRA adapter (TRL `SFTTrainer`)",
    "dpo": "direct preference optimisation on pairs of its accepted and failed samples (TRL `DPOTrainer`)",
    "kto": "KTO on its accepted and failed samples (TRL `KTOTrainer`)",
    "sft+dpo": "supervised fine-tuning, then direct preference optimisation against that model (TRL)",
    "kd": "logit distillation from the teacher's stored top-k log-probabilities, mixed with cross-entropy",
    "on-policy": "on-policy distillation: the student generated, the teacher scored its tokens (TRL `GKDTrainer`)",
}


def method_params(t: dict) -> str:
    """The training method's own parameters and inputs, from the train summary ('' for sft)."""
    parts = []
    if pairs := t.get("pairs") or t.get("unpaired"):
        parts.append("preference data: " + ", ".join(f"{k} {v}" for k, v in pairs.items() if not isinstance(v, (dict, list))))
    for key in ("preference", "kd", "on_policy"):
        if isinstance(t.get(key), dict):
            parts.append(f"{key.replace('_', '-')}: " + ", ".join(f"{k} {v}" for k, v in t[key].items()
                                                                  if v is not None and not isinstance(v, (dict, list))))
    return "".join(f"\n   {p}." for p in parts)


def reproducibility_text(sampling: dict) -> str:
    """What a rerun of the recipe gives again (docs/performance.md, "Reproducible samples")."""
    if sampling.get("reproducible"):
        return ("Reproducible: batches fixed by the requests alone (batch-invariant kernels on GPUs), so the same "
                "recipe on the same hardware and replicas samples the same answers; other hardware may not.")
    return ("Not batch-fixed: the engine batched requests as they arrived, so a rerun (another load, other hardware) "
            "can differ in some samples and, through them, in the scores (`sampling.reproducible` fixes the batches).")


def cost_text(metrics: dict) -> str:
    """A model's cost per correct answer as shown: "unknown" without a price or a size to stand in
    for one (a logged API model), "-" without a correct answer."""
    if metrics.get("price_per_mtok") is None:
        return "unknown"
    return "-" if metrics["cost_per_correct"] is None else f"{metrics['cost_per_correct']:.3g}"


def _eval_scope(ev: dict | None) -> str:
    """What the held-out prompts are: the training sources' own, or also an external benchmark."""
    external = sorted({g.split("/")[0] for g in (ev or {}).get("groups", {}) if g.split("/")[0] in EXTERNAL_BENCHMARKS})
    if external:
        return (f"The evaluation includes an external benchmark ({', '.join(external)}; by category above) beside "
                "held-out prompts from the training sources.")
    return "The evaluation uses held-out prompts from the same sources as the training prompts, not an external benchmark."


def write_card(run_dir: Path) -> Path:
    """Writes student/README.md and lineage.json; returns the card's path."""
    files = RunDir(run_dir)
    info = read_run(run_dir)
    files.write_json(files.lineage, lineage(run_dir, info))
    files.write_text(files.model_card, model_card(run_dir))
    return files.model_card
