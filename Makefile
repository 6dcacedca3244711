# Two commands on a fresh machine (each installs what it needs into ./.venv first):
#   make run    -- the default workflow (digits benchmark, CPU, minutes)
#   make test   -- the whole test suite: fast unit tests, slow end-to-end tests, rehearsals, SLURM tests
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

.PHONY: install run test test-fast test-slow test-slurm test-rehearsal
install: $(STAMP)

# Through offshelf's wrapper: after a killed run it unlocks (only when no Snakemake runs here).
run: $(STAMP)
	$(VENV)/bin/offshelf resume --cores $(CORES)

# pytest exits 5 when a marker selects no tests; that is not a failure here.
PYTEST = $(VENV)/bin/python -m pytest

test-fast: $(STAMP)
	$(PYTEST) -q || [ $$? -eq 5 ]

test-slow: $(STAMP)
	$(PYTEST) -q -m slow || [ $$? -eq 5 ]

# Wet rehearsals: the three ImageNet workflows and text2image, run for real through Snakemake on
# tiny stand-in checkpoints downloaded from a local server (tests/test_rehearsal.py; <= 10 min on
# 2 cores). --durations reports each rehearsal's wall time.
# A private --basetemp: pytest prunes all but the 3 newest /tmp/pytest-of-$USER/pytest-N folders, so
# another user's pytest sessions on a shared machine deleted a running rehearsal's files.
REHEARSAL_TMP ?= $(CURDIR)/.pytest-rehearsal
test-rehearsal: $(STAMP)
	$(PYTEST) -q -m rehearsal --durations=0 --basetemp=$(REHEARSAL_TMP) || [ $$? -eq 5 ]

# A one-node SLURM cluster on this machine (needs root: apt-get, munged, slurmctld, slurmd).
# Without root the SLURM tests skip with the reason; CI sets OFFSHELF_REQUIRE_SLURM=1 so they cannot.
test-slurm: $(STAMP)
	bash .ci/slurm_cluster.sh start || [ -z "$$OFFSHELF_REQUIRE_SLURM" ]
	$(PYTEST) -q -m slurm; rc=$$?; bash .ci/slurm_cluster.sh stop || true; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]

test: test-fast test-slow test-rehearsal test-slurm
