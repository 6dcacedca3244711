# Two commands on a fresh machine (each installs what it needs into ./.venv first):
#   make run    -- the default workflow (digits benchmark, CPU, minutes)
#   make test   -- the whole test suite: fast unit tests, slow end-to-end tests, SLURM tests
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml envs/requirements.txt | sha256sum | cut -c1-12)
CORES ?= all

$(STAMP): pyproject.toml envs/requirements.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r envs/requirements.txt
	$(VENV)/bin/pip install --quiet --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $@

.PHONY: install run test test-fast test-slow test-slurm
install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/snakemake --cores $(CORES)

# pytest exits 5 when a marker selects no tests; that is not a failure here.
PYTEST = $(VENV)/bin/python -m pytest
define allow_empty
$(1) || { rc=$$?; [ $$rc -eq 5 ] || exit $$rc; }
endef

test-fast: $(STAMP)
	$(call allow_empty,$(PYTEST) -q)

test-slow: $(STAMP)
	$(call allow_empty,$(PYTEST) -q -m slow)

test-slurm: $(STAMP)
	bash .ci/slurm_cluster.sh start
	$(call allow_empty,$(PYTEST) -q -m slurm); rc=$$?; bash .ci/slurm_cluster.sh stop; exit $$rc

test: test-fast test-slow test-slurm
