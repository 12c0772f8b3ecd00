# Everything runs from a project-local virtual environment, created on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROTOS := $(wildcard protos/*/v1/*.proto)

.DEFAULT_GOAL := help
.PHONY: help install proto proto-check lint format run test k8s-check bench clean

help:
	@echo "make run          start Redis and the four services (gateway on http://127.0.0.1:8080)"
	@echo "make test         install, check generated code and lint, run the test suite"
	@echo "make proto        regenerate the Python stubs from protos/"
	@echo "make proto-check  prove the committed stubs match protos/"
	@echo "make k8s-check    render deploy/k8s and its overlays, validate them offline against"
	@echo "                  the Kubernetes schemas, and check that they agree with the code"
	@echo "make bench        measure the suite against raw Redis and raw gRPC (a few minutes)"
	@echo "make install      create .venv and install the project (make run and make test do it)"
	@echo "make lint         ruff check and format check, mypy"
	@echo "make format       ruff fix and format"
	@echo "make clean        remove .venv, the caches and var/ (the embedded Redis's data)"

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed

proto: install
	$(PY) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)

proto-check: install
	@rm -rf $(VENV)/proto-check && mkdir -p $(VENV)/proto-check
	@$(PY) -m grpc_tools.protoc -I . --python_out=$(VENV)/proto-check --pyi_out=$(VENV)/proto-check \
		--grpc_python_out=$(VENV)/proto-check $(PROTOS)
	@for f in $$(cd $(VENV)/proto-check && find protos -name '*_pb2*'); do \
		cmp -s $(VENV)/proto-check/$$f $$f || { echo "$$f is stale: run 'make proto'"; exit 1; }; \
	done
	@test "$$(find protos -name '*_pb2*' | wc -l)" = "$$(find $(VENV)/proto-check -name '*_pb2*' | wc -l)" \
		|| { echo "protos/ holds generated files no .proto produces: run 'make proto'"; exit 1; }
	@echo "generated stubs match protos/"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m mypy

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

run: install
	@$(PY) -m services

k8s-check: install
	$(PY) -m deploy.k8s_check

test: install proto-check lint k8s-check
	$(PY) -m pytest

bench: install
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis *.egg-info var
