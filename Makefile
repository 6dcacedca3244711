# Two commands on a fresh machine (each installs what it needs into ./.venv first):
#   make run    -- the default workflow (digits benchmark, CPU, minutes)
#   make test   -- the whole test suite: unit tests, workflow tests (SLURM included), rehearsals
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

.PHONY: install run test test-fast test-workflow test-rehearsal benchmark-tiny
install: $(STAMP)

# Through offshelf's wrapper: after a killed run it unlocks (only when no Snakemake runs here).
run: $(STAMP)
	$(VENV)/bin/offshelf resume --cores $(CORES)

# pytest exits 5 when a marker selects no tests; that is not a failure here.
PYTEST = $(VENV)/bin/python -m pytest
# Unit tests in two worker processes, one torch thread each (tests/conftest.py): the 2 cores busy.
WORKERS ?= 2

test-fast: $(STAMP)
	$(PYTEST) -q -n $(WORKERS) || [ $$? -eq 5 ]

# Everything that starts Snakemake (tests/workflow/), in one session: config/ci.yaml runs once
# (the ci_run fixture) and every end-to-end test reads it, the SLURM test included, which runs part
# of the same config on a one-node cluster and compares its outputs with that run. Starting the
# cluster needs root (apt-get, munged, slurmctld, slurmd); without it the SLURM tests skip with the
# reason, and CI sets OFFSHELF_REQUIRE_SLURM=1 so that they cannot.
test-workflow: $(STAMP)
	bash .ci/slurm_cluster.sh start || { [ -z "$$OFFSHELF_REQUIRE_SLURM" ] && echo "make test-workflow: no SLURM cluster (starting one needs root): the SLURM tests will skip; run \`sudo make test-workflow\` to run them"; }
	$(PYTEST) -q -m "slow or slurm"; rc=$$?; bash .ci/slurm_cluster.sh stop || true; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]

# Wet rehearsals: the three ImageNet workflows and text2image, run for real through Snakemake on
# tiny stand-in checkpoints downloaded from a local server (tests/workflow/test_rehearsal.py).
# --durations reports each rehearsal's wall time.
# A private --basetemp: pytest prunes all but the 3 newest /tmp/pytest-of-$USER/pytest-N folders, so
# another user's pytest sessions on a shared machine deleted a running rehearsal's files.
REHEARSAL_TMP ?= $(CURDIR)/.pytest-rehearsal
test-rehearsal: $(STAMP)
	$(PYTEST) -q -m rehearsal --durations=0 --basetemp=$(REHEARSAL_TMP) || [ $$? -eq 5 ]

# The GPU benchmark's tiny CPU mode, so the prepared GPU command (benchmarks/gpu_throughput.py)
# cannot rot: tiny networks, every lever but compile, about 30 s of CPU. Its files go to a scratch folder.
benchmark-tiny: $(STAMP)
	out=$$(mktemp -d) && $(VENV)/bin/python benchmarks/gpu_throughput.py --device cpu --tiny --out $$out/gpu_throughput.json && rm -rf $$out

test: test-fast test-workflow test-rehearsal
