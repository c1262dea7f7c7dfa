# stepbus: the two commands are `make run` (whole stack + a demo task) and `make test`.
SHELL := /bin/bash
UV ?= uv
PY := $(UV) run --frozen python
PYTEST_ARGS ?=
# helm for the chart tests (helm lint, helm template), built from source with `go install`.
HELM_VERSION ?= v3.21.4
# What helm's release builds stamp in (its own version; the Kubernetes version of its client-go,
# which `helm template` and the lint deprecation checks assume).
HELM_LDFLAGS := -X helm.sh/helm/v3/internal/version.version=$(HELM_VERSION) \
	$(foreach pkg,chartutil lint/rules,-X helm.sh/helm/v3/pkg/$(pkg).k8sVersionMajor=1 \
	-X helm.sh/helm/v3/pkg/$(pkg).k8sVersionMinor=36)
GO ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)

.PHONY: help setup deps jars helm up down status run test test-unit lint schemas bench chaos fuzz eval-memory clean

help:
	@echo "make run      start the local stack (Kafka, Redis, services) and run a demo task"
	@echo "make test     install what the tests need and run them (unit, integration, e2e)"
	@echo "make up/down  start/stop the local stack;  make status"
	@echo "make schemas  regenerate schemas/ from the event models"
	@echo "make bench    orchestration overhead vs raw Kafka round trip; throughput of 1,000 tasks"
	@echo "make eval-memory  recall@1/@5 and MRR of long-term memory on 120 paraphrased questions"
	@echo "make chaos    200 tasks while services, the broker and Redis are killed or flushed"
	@echo "make fuzz     10,000 bad records on every consumed topic among 200 valid tasks (FUZZ_ARGS)"
	@echo "make lint     ruff format --check, ruff check, mypy (strict on libs/)"
	@echo "make helm     build helm $(HELM_VERSION) into .stepbus/bin (go install; kept once built)"

setup: deps jars

deps:
	@command -v $(UV) >/dev/null || { echo "stepbus: uv is required: pip install uv"; exit 1; }
	$(UV) sync --frozen

jars:
	bash deploy/local/kafka.sh fetch

helm:
	@if [ -x .stepbus/bin/helm ]; then exit 0; fi; \
	[ -x "$(GO)" ] || { echo "stepbus: Go is required to build helm (https://go.dev/dl, 1.24 or newer)"; exit 1; }; \
	echo "stepbus: building helm $(HELM_VERSION) into .stepbus/bin"; \
	GOBIN="$(CURDIR)/.stepbus/bin" "$(GO)" install -ldflags "$(HELM_LDFLAGS)" \
		helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

up: setup
	$(PY) -m stepbus_devtools.stack up

down:
	$(PY) -m stepbus_devtools.stack down

status:
	$(PY) -m stepbus_devtools.stack status

run: up
	@S=demo-$$$$; \
	$(UV) run --frozen stepbus submit "What is 17 * 23, and then (391 - 1) / 2?" \
		--tool calculator --session $$S --follow && \
	$(UV) run --frozen stepbus submit "What did I ask you before, and what did you answer?" \
		--tool calculator --session $$S --follow

test: setup helm
	@command -v redis-server >/dev/null || { echo "stepbus: redis-server is required: apt-get install -y redis-server"; exit 1; }
	$(UV) run --frozen pytest $(PYTEST_ARGS)

test-unit: deps
	$(UV) run --frozen pytest tests/unit $(PYTEST_ARGS)

lint: deps
	$(UV) run --frozen ruff format --check .
	$(UV) run --frozen ruff check .
	$(UV) run --frozen mypy

schemas: deps
	$(PY) -m stepbus_contracts.schema schemas

eval-memory: deps
	$(PY) -m stepbus_devtools.memory_eval

bench: up
	$(PY) -m stepbus_devtools.bench $(BENCH_ARGS)
	$(PY) -m stepbus_devtools.tracing_bench $(TRACING_BENCH_ARGS)
	$(PY) -m stepbus_devtools.memory_bench $(MEMORY_BENCH_ARGS)
	$(PY) -m stepbus_devtools.mcp_bench
	$(PY) -m stepbus_devtools.policy_bench
	$(PY) -m stepbus_devtools.gateway_bench

chaos: up
	$(PY) -m stepbus_devtools.chaos $(CHAOS_ARGS)

fuzz: up
	$(PY) -m stepbus_devtools.fuzz $(FUZZ_ARGS)

clean: down
	rm -rf .stepbus/kafka .stepbus/redis .stepbus/logs .stepbus/run
