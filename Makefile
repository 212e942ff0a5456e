# The two commands: `make run` (the whole stack) and `make test` (the whole suite).
# Both create .venv, install, and find or start PostgreSQL and Redis (scripts/devservices.py).

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# .venv installs from the lock files (every transitive pin with its hashes, compiled from
# requirements*.txt by `make lock`, scripts/locks.py) with uv, which scripts/ensure_uv.sh
# bootstraps from requirements-run.lock. `make run` and `make migrate` need only
# requirements-run.lock (the runtime, honcho and the local servers), added to what is there;
# every other target syncs .venv to exactly requirements-dev.lock. A stamp per lock's
# checksum: nothing reinstalls until a lock changes.
UV := $(VENV)/bin/uv
RUN_STAMP := $(VENV)/.synced-run-$(shell cksum < requirements-run.lock | cut -d' ' -f1)
STAMP := $(VENV)/.synced-dev-$(shell cksum < requirements-dev.lock | cut -d' ' -f1)
# uv reads no pip.conf: it installs from PyPI (or UV_INDEX_URL), each file checked against
# the lock's hashes.
UV_PIP := $(UV) pip --quiet
# BROKER=rabbitmq: Celery's broker is the RabbitMQ at RABBITMQ_URL (127.0.0.1:5672 by
# default; it must be running), with quorum queues; the default is REDIS_URL's Redis.
BROKER ?= redis
DEVSERVICES := $(PY) scripts/devservices.py run --broker $(BROKER)
# The Node tooling (OpenAPI linters) installs like .venv: node and npm from the system's
# packages where missing (scripts/ensure_node.sh), then exactly package-lock.json.
OPENAPI_TOOLS := tools/openapi
OPENAPI_STAMP := $(OPENAPI_TOOLS)/node_modules/.installed-$(shell cat $(OPENAPI_TOOLS)/package-lock.json | cksum | cut -d' ' -f1)
export PATH := $(abspath $(VENV))/bin:$(PATH)
export PORT ?= 8000
export FLOWER_PORT ?= 5555
PYTEST_ARGS ?=
# Settings are production's unless APP_ENV says otherwise (config.py): each target says.
DEV := APP_ENV=development
TESTENV := APP_ENV=test
# Separate database and Redis db per checkout let several suites run side by side.
# `make test-pgbouncer` runs the same suite with DATABASE_URL through a throwaway PgBouncer
# in transaction mode (scripts/dev_pgbouncer.py; Debian's package, installed if missing).
# With pytest-xdist, worker gwN uses database $(TEST_DATABASE)_gwN and Redis db
# TEST_REDIS_DB - N (tests/support/workerdb.py): the default 15 takes 15 and 14.
TEST_DATABASE ?= maycole_test
TEST_REDIS_DB ?= 15
# REDIS_TOPOLOGY=sentinel (make run, make test): Redis behind Sentinel instead of one
# server, a master, a replica and three sentinels started by scripts/dev_redis.py.
# TOPOLOGY=redis|rabbitmq|sentinel (make test-faults): the fault suite's broker, a server
# of its own it may restart, kill or wipe (tests/faults/stack.py).
# Two worker processes, each test file on one of them (each runs its own Celery worker).
# PYTEST_ARGS comes after and wins: PYTEST_ARGS="-n 0" runs serially.
TEST_WORKERS ?= -n 2 --dist loadfile
# The benchmark's database (rebuilt by every run; must end in _bench) and Redis db.
BENCH_DATABASE ?= maycole_bench
BENCH_REDIS_DB ?= 3
# The typed TypeScript client; its npm dependencies are reinstalled (npm ci) when its lock
# file changes, as the .venv's are when the requirements change.
CLIENT := clients/typescript
NODE_STAMP := $(CLIENT)/node_modules/.installed-$(shell cksum < $(CLIENT)/package-lock.json | cut -d' ' -f1)

.PHONY: run test test-pgbouncer test-faults fuzz audit lock lock-check test-fast migrate lint openapi-lint format typecheck check bench install clean client client-check

$(UV):
	@bash scripts/ensure_uv.sh $(VENV) requirements-run.lock

# Compiled to bytecode as it installs: otherwise the stack's five processes, starting
# together on a fresh .venv, each compile the same modules (the start took twice as long
# here; bench/RESULTS.md). The dev lock is not: compiling all of it costs 20 s, and the
# tools and tests compile only what they import.
$(RUN_STAMP): requirements-run.lock | $(UV)
	@echo "installing requirements-run.lock into $(VENV) ..."
	@$(UV_PIP) install --python $(PY) --require-hashes --compile-bytecode -r requirements-run.lock
	@rm -f $(VENV)/.synced-run-* && touch $(RUN_STAMP)

$(STAMP): requirements-dev.lock | $(UV)
	@echo "syncing $(VENV) to requirements-dev.lock ..."
	@$(UV_PIP) sync --python $(PY) --require-hashes requirements-dev.lock
	@rm -f $(VENV)/.synced-dev-* $(VENV)/.installed-* && touch $(STAMP)

$(NODE_STAMP): $(CLIENT)/package.json $(CLIENT)/package-lock.json
	@bash scripts/ensure_node.sh
	@echo "installing the TypeScript client's dependencies into $(CLIENT)/node_modules ..."
	@npm ci --prefix $(CLIENT) --no-audit --no-fund --loglevel=error
	@touch $(NODE_STAMP)

$(OPENAPI_STAMP): $(OPENAPI_TOOLS)/package.json $(OPENAPI_TOOLS)/package-lock.json
	@scripts/ensure_node.sh
	@echo "installing the OpenAPI linters into $(OPENAPI_TOOLS)/node_modules ..."
	@cd $(OPENAPI_TOOLS) && npm ci --loglevel=error
	@rm -f $(OPENAPI_TOOLS)/node_modules/.installed-* && touch $(OPENAPI_STAMP)

install: $(STAMP) $(NODE_STAMP) $(OPENAPI_STAMP)

run: $(RUN_STAMP)  ## web, worker, beat and flower; Ctrl-C stops all (and servers it started)
	@$(DEV) $(DEVSERVICES) --database maycole -- $(PY) scripts/run_stack.py

test: $(STAMP) $(NODE_STAMP)  ## the whole suite against real PostgreSQL, Redis and Celery workers
	@bash scripts/ensure_pgbouncer.sh
	@$(TESTENV) $(DEVSERVICES) --database $(TEST_DATABASE) --redis-db $(TEST_REDIS_DB) -- $(PY) -m pytest $(TEST_WORKERS) $(PYTEST_ARGS)

test-pgbouncer: $(STAMP) $(NODE_STAMP)  ## the whole suite through PgBouncer in transaction mode (DB_POOLER=transaction)
	@bash scripts/ensure_pgbouncer.sh
	@$(TESTENV) $(DEVSERVICES) --pgbouncer --database $(TEST_DATABASE) --redis-db $(TEST_REDIS_DB) -- $(PY) -m pytest $(TEST_WORKERS) $(PYTEST_ARGS)

test-faults: $(STAMP)  ## kill and restart processes and servers under load; FAULTS_PROFILE=ci is shorter, TOPOLOGY=redis|rabbitmq|sentinel picks the broker
	@$(TESTENV) MAYCOLE_FAULTS=1 FAULTS_PROFILE=$${FAULTS_PROFILE:-full} FAULTS_TOPOLOGY=$(or $(TOPOLOGY),redis) $(PY) -m pytest tests/faults -s -p no:cacheprovider $(PYTEST_ARGS)

fuzz: $(STAMP)  ## schemathesis against /openapi.json, the long profile (CI runs a short one in make test)
	@$(TESTENV) FUZZ_PROFILE=long $(DEVSERVICES) --database $(TEST_DATABASE) --redis-db $(TEST_REDIS_DB) -- $(PY) -m pytest tests/fuzz $(PYTEST_ARGS)

audit: $(STAMP)  ## every locked pin against known vulnerabilities (pip-audit); AUDIT_STRICT=1 fails if unreachable
	@$(PY) scripts/audit.py

lock: $(UV)  ## recompile the lock files from requirements*.txt; PACKAGE=x upgrades x, UPGRADE=1 every pin
	@$(PY) scripts/locks.py compile --uv $(UV) $(if $(PACKAGE),--upgrade-package $(PACKAGE)) $(if $(UPGRADE),--upgrade)

lock-check: $(UV)  ## the locks are what the requirements compile to, and a fresh venv holds exactly their pins
	@$(PY) scripts/locks.py check --uv $(UV)

bench: $(STAMP)  ## B1-B9 against same-run baselines (bench/README.md); BENCH="http queue" for some
	@$(DEV) $(DEVSERVICES) --database $(BENCH_DATABASE) --redis-db $(BENCH_REDIS_DB) -- $(PY) -m bench.run $(BENCH)

migrate: $(RUN_STAMP)  ## apply migrations to the configured (or local) database
	@APP_ENV=$${APP_ENV:-development} $(DEVSERVICES) --database maycole -- flask --app app:create_app db upgrade

lint: $(STAMP) $(NODE_STAMP)  ## ruff, the import contract (edge -> domains -> job kernel -> core), prettier
	ruff check --no-cache .
	ruff format --no-cache --check .
	PYTHONPATH=. lint-imports --no-cache
	npm --prefix $(CLIENT) run --silent lint

openapi-lint: $(STAMP) $(OPENAPI_STAMP)  ## /openapi.json against Redocly's recommended and Spectral's oas rules
	@mkdir -p var
	@$(DEV) flask --app app:create_app spec --quiet --output var/openapi.json
	cd $(OPENAPI_TOOLS) && REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true \
		npx --no-install redocly lint ../../var/openapi.json --config redocly.yaml
	cd $(OPENAPI_TOOLS) && npx --no-install spectral lint ../../var/openapi.json \
		--ruleset .spectral.yaml --fail-severity warn

format: $(STAMP) $(NODE_STAMP)
	ruff check --fix .
	ruff format .
	npm --prefix $(CLIENT) run --silent format

typecheck: $(STAMP) $(NODE_STAMP)
	mypy .
	npm --prefix $(CLIENT) run --silent typecheck

# The document is dumped by the app itself (no servers needed to build it); openapi-typescript
# turns it into src/schema.ts, and the helpers and the e2e flow must still type-check.
client: $(STAMP) $(NODE_STAMP)  ## regenerate the TypeScript client's types from the OpenAPI document
	@mkdir -p $(CLIENT)/build
	@$(DEV) $(PY) -m flask --app app:create_app spec --quiet --output $(CLIENT)/build/openapi.json
	npm --prefix $(CLIENT) run --silent generate
	npm --prefix $(CLIENT) run --silent typecheck

client-check: client  ## fail when the committed client is not what the document generates
	@git diff --exit-code -- $(CLIENT) && test -z "$$(git status --porcelain -- $(CLIENT))" \
		|| { git status --short -- $(CLIENT); echo "clients/typescript is out of date: run make client and commit it" >&2; exit 1; }

check: lint typecheck test

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache $(CLIENT)/build $(CLIENT)/dist
