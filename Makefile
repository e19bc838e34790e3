# Two commands on a fresh machine:
#   make demo   installs what is needed and runs `liverec demo` (embedded SQLite default)
#   make test   installs what is needed (incl. Chromium for browser tests) and runs the tests
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo test browser clean constraints

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/liverec demo

# Debian's Chromium drives the browser tests (never `playwright install`).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) || echo "chromium could not be installed: browser tests will be skipped"

test: install browser
	$(BIN)/pytest -q

# Resolve the newest releases pyproject.toml allows, in a scratch venv, into constraints.txt.
constraints:
	rm -rf .constraints-venv && $(PY) -m venv .constraints-venv
	.constraints-venv/bin/pip install --quiet --upgrade pip
	.constraints-venv/bin/pip install --quiet -e '.[test]'
	{ sed -n '/^#/p' constraints.txt; .constraints-venv/bin/pip freeze --exclude-editable | sed 's/+cpu$$//' | tr 'A-Z_' 'a-z-' | sort; } > constraints.new
	mv constraints.new constraints.txt && rm -rf .constraints-venv

clean:
	rm -rf $(VENV) demo-data test-artifacts
