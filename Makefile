# The two commands a new user runs on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
DEMO ?= recipes/demo/smollm2-135m-from-smollm2-135m.yaml
DEMO_AGENT ?= recipes/agent/smollm2-135m-from-smollm2-135m.yaml
USAGE_DEMO ?= runs/usage-demo
# The usage demo's size: training and held-out calls per task cluster (docs/usage-logs.md).
USAGE_CAPS ?= --max-train 40 --max-train-tokens 6000 --max-heldout 12

.PHONY: install demo demo-agent demo-usage test test-fast bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/install.sh constraints-cpu.txt
	VENV=$(VENV) bash scripts/install.sh
	touch $@

demo: install
	$(VENV)/bin/distill run $(DEMO)

demo-agent: install
	$(VENV)/bin/distill run $(DEMO_AGENT)

# An agent's logs to small models: seeded logs, import (redacted), clusters, convert (plan,
# baselines, fine-tunes, gate), report at $(USAGE_DEMO)/conversion/report.html.
demo-usage: install
	$(VENV)/bin/distill usage demo-logs $(USAGE_DEMO)/logs.jsonl
	$(VENV)/bin/distill usage import $(USAGE_DEMO)/logs.jsonl --to $(USAGE_DEMO)/store
	$(VENV)/bin/distill usage clusters $(USAGE_DEMO)/store
	$(VENV)/bin/distill usage convert $(USAGE_DEMO)/store --out $(USAGE_DEMO)/conversion $(USAGE_CAPS)

test: install
	$(VENV)/bin/pytest

test-fast: install
	$(VENV)/bin/pytest -m "not slow"

bench: install
	$(VENV)/bin/python bench/sampling_overhead.py
	$(VENV)/bin/python bench/cpu_top_p.py
	$(VENV)/bin/python bench/sft_throughput.py
	$(VENV)/bin/python bench/cpu_fused_head.py
	$(VENV)/bin/python bench/cpu_packed_attention.py
	$(VENV)/bin/python bench/filters.py
	$(VENV)/bin/python bench/replicas.py
	$(VENV)/bin/python bench/router_classify.py
	$(VENV)/bin/python bench/router_overhead.py

clean:
	rm -rf $(VENV) runs
