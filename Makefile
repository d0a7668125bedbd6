# The two commands a new user runs on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
DEMO ?= recipes/demo/smollm2-135m-from-smollm2-135m.yaml
DEMO_AGENT ?= recipes/agent/smollm2-135m-from-smollm2-135m.yaml

.PHONY: install demo demo-agent test test-fast bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/install.sh constraints-cpu.txt
	VENV=$(VENV) bash scripts/install.sh
	touch $@

demo: install
	$(VENV)/bin/distill run $(DEMO)

demo-agent: install
	$(VENV)/bin/distill run $(DEMO_AGENT)

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

clean:
	rm -rf $(VENV) runs
