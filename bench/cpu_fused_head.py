"""Training tokens/s of the train stage on a CPU with TRL's fused LM head projecting only the
labelled (completion) positions, against TRL's own CPU choice of projecting every position:
the same data, model and settings, one process per side; only `completion_rows_only_head`
differs (the baseline side swaps it for a no-op). Losses are printed so that a reader sees
both sides trained the same.

The demo's data are the interesting case (short completions after a ~50-token chat prompt):

    python bench/cpu_fused_head.py --dataset runs/demo-arithmetic/<run-id>/dataset/train.parquet

Without --dataset: synthetic rows as in bench/sft_throughput.py (long completions, short prompts).
"""

from __future__ import annotations

from sft_throughput import one_change

if __name__ == "__main__":
    one_change(__doc__, "completion_rows_only_head", ("every-position", "labelled-only"))
