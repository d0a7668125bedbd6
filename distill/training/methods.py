"""Which fit trains the student for each `train.method`.

Every fit has the signature of `distill.training.sft.fit`,
`fit(run, base, resume_from, progress=None, report_to=(), on_log=None, callbacks=())`, and
returns the same facts (steps, train_loss, seconds, world_size, backend, shards,
tokens_per_epoch, dataset_digest, log), so the train stage and the Ray Train workers call any
method alike. A method may add facts of its own (sft+dpo: "sft_phase").
"""

from __future__ import annotations

import importlib
from typing import Callable

# The methods that train on preference data from the run's samples, and which form each reads.
PAIRED = ("dpo", "sft+dpo")
UNPAIRED = ("kto",)

# method -> (module, function); modules are imported when their method is asked for.
FITS = {
    "sft": ("distill.training.sft", "fit"),
    "dpo": ("distill.training.preference", "fit_dpo"),
    "kto": ("distill.training.preference", "fit_kto"),
    "sft+dpo": ("distill.training.preference", "fit_sft_then_dpo"),
    "kd": ("distill.training.kd", "fit"),
    "on-policy": ("distill.training.on_policy", "fit"),
}


def fit_for(method: str) -> Callable[..., dict]:
    """The fit function of `method`; a RuntimeError names a method this installation cannot train."""
    if method not in FITS:
        raise RuntimeError(f"train.method {method!r} is unknown: one of {', '.join(FITS)}")
    module_name, name = FITS[method]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:  # the module is there; something it imports is not
            raise
        raise RuntimeError(f"train.method {method!r} is not available in this version of distill "
                           f"({module_name} is missing): use sft, dpo, kto or sft+dpo") from None
    fit = getattr(module, name, None)
    if fit is None:
        raise RuntimeError(f"train.method {method!r} is not available in this version of distill "
                           f"({module_name} has no {name})")
    return fit
