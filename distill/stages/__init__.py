"""The stages. Every stage module has the same shape:

    NAME = "sample"          # the stage's name in `distill run --until` and the run's summaries
    NEEDS_STUDENT = False    # True: skipped by a recipe without a `student:` (a data-only run)

    def run(ctx: Context) -> summary   # does the stage's work, or finds it done; logs its metrics

The pipeline is a table of these modules and a loop (distill/pipeline.py); it knows nothing
of any one stage. What a stage needs beyond the run (backends, progress bars, the tracker) is
in the context.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from distill.backends import Backend
from distill.run import Run


@dataclass
class Context:
    run: Run
    stages: list[str]  # the stages this invocation runs, in order
    tracker: Any  # distill.tracking.Tracker (or anything with log/summary/table/active)
    # model entry (None: the teacher) -> a backend serving it with the run's settings
    make_backend: Callable[[Any], Backend]
    progress_factory: Callable[[str], Any] | None = None  # label -> a progress bar, or None
    # Stand-ins for the real backends (tests): the teacher's, and one per evaluated/judge model.
    teacher_backend_override: Any = None
    backend_for: Callable[[Any], Any] | None = None
    _served: dict = field(default_factory=dict, repr=False)

    @property
    def recipe(self):
        return self.run.recipe

    def bar(self, label: str):
        return self.progress_factory(label) if self.progress_factory else None

    def serve(self, model) -> Backend:
        """A backend serving `model` (a teacher entry) with the run's sampling settings."""
        return self.backend_for(model) if self.backend_for is not None else self.make_backend(model)

    def teacher_backend(self) -> Backend:
        if self.teacher_backend_override is not None:
            return self.teacher_backend_override
        return self.make_backend(None)

    def fresh_backends(self) -> None:
        """Forgets the model backends made so far: each stage starts the ones it needs."""
        self._served.clear()

    def served_by_id(self, model_id: str) -> Backend:
        """model id (a teacher id or YAML) -> a backend serving it, made once per id and stage,
        started when first asked for: the judge verifier and guard-model filters use it."""
        if model_id not in self._served:
            from distill.teachers import load_teacher

            self._served[model_id] = self.serve(load_teacher(model_id, self.recipe.base_dir))
        return self._served[model_id]
