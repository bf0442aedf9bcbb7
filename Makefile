# Quick start: `make demo` runs pandian on the embedded demo data; `make test` runs the suite.
# Both create .venv and install what they need (system packages too, via apt, when missing).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SYSTEM_PACKAGES := libzbar0 libjpeg62-turbo zlib1g faketime

.PHONY: demo test lint typecheck bench clean system-packages

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory system-packages
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

system-packages:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing system packages: $$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing; \
	fi

demo: $(STAMP)
	rm -f demo.db
	PANDIAN_DATABASE_URL=sqlite+aiosqlite:///$(CURDIR)/demo.db $(BIN)/pandian demo

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/plan.py

clean:
	rm -rf $(VENV) demo.db
