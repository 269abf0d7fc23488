# The two commands of the quick start: `make demo` and `make test`.
# Both create .venv with exactly torch==2.13.0 (the CPU build; any other torch
# spec downloads a multi-GB CUDA build) and install sparank into it.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test data browser bench mutate clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Fashion-MNIST from Debian's package, when we can (root, apt); optional:
# tests that need it are skipped with a message saying how to get it.
data:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
	  || echo "note: could not install dataset-fashion-mnist; Fashion-MNIST tests will be skipped"; \
	else echo "note: not root; Fashion-MNIST tests will be skipped (sudo apt-get install dataset-fashion-mnist)"; fi

# Debian's chromium, for the test that opens the report in a real browser (Playwright drives it;
# its own browser download is unreachable here); optional: that test is skipped with the reason.
browser:
	@if command -v chromium >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)) >/dev/null 2>&1 \
	  || echo "note: could not install chromium; the browser test of the report will be skipped"; \
	else echo "note: not root; the browser test of the report will be skipped (sudo apt-get install chromium)"; fi

test: $(STAMP) data browser
	$(PY) -m pytest

demo: $(STAMP)
	$(VENV)/bin/sparank study configs/digits.toml

bench: $(STAMP) data
	$(PY) -m pip install --quiet -e '.[test,bench]'
	$(PY) benchmarks/bench_fgsm.py

# Mutation testing of the measure and the statistics (attacks, robustness, linear, compare;
# [tool.mutmut] in pyproject.toml). On demand, not part of `make test`: it takes hours on 2 cores.
mutate: $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,mutate]'
	$(VENV)/bin/mutmut run || true
	$(VENV)/bin/mutmut results

clean:
	rm -rf $(VENV) sparank-results mutants
