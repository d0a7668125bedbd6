"""The licence decision for a loaded recipe: its teacher, its student (name, base, use) and its
prompt sources, as the licence engine's inputs. The teacher entry and the student's base are the
recipe's resolved ones, so the decision judges exactly what the stages will use."""

from __future__ import annotations

from distill.licensing import Acknowledgement, Decision, LicenceError, Ref, Use, decide


def decide_for_recipe(recipe) -> Decision:
    teacher = recipe.teacher_entry
    teachers = [Ref(licence=teacher.licence, label=f"teacher {teacher.id}", model=teacher.model)]
    prompts = [Ref(licence=c.params.licence, label=f"prompts.train[{i}] {c.source}")
               for i, c in enumerate(recipe.prompts.train)]
    eval_prompts = [Ref(licence=c.params.licence, label=f"prompts.eval[{i}] {c.source}")
                    for i, c in enumerate(recipe.prompts.eval)]
    student = recipe.student
    if student is None:  # samples only: rules about the student become obligations on whoever trains one
        return decide(teachers, None, prompts, Use(student_name=None, commercial=None), eval_prompts=eval_prompts)
    use = Use(
        student_name=student.name,
        commercial=student.commercial_use,
        competing=student.competing,
        acknowledge=[Acknowledgement.model_validate(a.model_dump()) for a in student.acknowledge],
    )
    return decide(teachers, base_ref(recipe), prompts, use, eval_prompts=eval_prompts)


def base_ref(recipe) -> Ref:
    base = recipe.student_base
    if base.local:
        if not base.licence:
            raise LicenceError(
                f"cannot tell the licence of base model {base.ref!r}: name a teacher id or teacher YAML, "
                "give the model directory a README.md with a `license:` field, or set student.base_licence")
        return Ref(licence=base.licence, label=f"base {base.ref}", model=base.ref)
    return Ref(licence=base.licence, label=f"base {base.id}", model=base.model)
