# Each target creates .venv and installs what it needs by itself (CPU torch where no GPU is present).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of torch unless an NVIDIA GPU is visible (an unpinned torch pulls a multi-GB CUDA build).
TORCH_SPEC := $(shell if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then echo torch; else echo torch==2.13.0; fi)

# The newest version_N under $(1) that holds a last.ckpt: an empty or failed version directory is never picked.
newest_run = $$(ls -d $(1)/version_*/checkpoints/last.ckpt | sort -V | tail -1 | sed 's|/checkpoints/last.ckpt$$||')

.PHONY: quickstart notebooks routing-comparison test test-slow bench reproduce reproduce-long reproduce-complementarity scaling lint clean-runs

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# Trains an unrouted and a DTR-routed DiT on the embedded digits with every analysis callback,
# then writes the figures. Offline.
# The two runs train side by side, one core each (faster on 2 cores than one after the other);
# the unrouted run's output goes to runs/quickstart/vanilla.log, the DTR run shows its progress bar.
quickstart: $(VENV)/.installed
	mkdir -p runs/quickstart
	OMP_NUM_THREADS=1 $(PY) -m dtr_lab fit --config experiments/quickstart.yaml --config experiments/routing/vanilla.yaml \
		--trainer.logger.init_args.name vanilla --trainer.enable_progress_bar false > runs/quickstart/vanilla.log 2>&1 & \
	OMP_NUM_THREADS=1 $(PY) -m dtr_lab fit --config experiments/quickstart.yaml; status=$$?; \
	wait $$! || { echo "the unrouted run failed: see runs/quickstart/vanilla.log"; exit 1; }; exit $$status
	$(PY) analysis/make_figures.py $(call newest_run,runs/quickstart/vanilla) $(call newest_run,runs/quickstart/dtr) \
		--out runs/quickstart/figures
	@echo
	@echo "Figures: runs/quickstart/figures/index.md"
	@echo "Logs:    runs/quickstart/{vanilla,dtr}/version_*"
	@echo "View:    $(PY) -m tensorboard.main --logdir runs/quickstart --samples_per_plugin images=1000"

# Switch-DiT and affinity routing beside the quickstart's two runs (run `make quickstart` first), on the
# same figures. The two-stage affinity workflow: the quickstart's unrouted run measured the task affinity
# (TaskAffinity) that the affinity run's masks are derived from. The two new runs train side by side.
routing-comparison: $(VENV)/.installed
	@test -n "$$(ls runs/quickstart/vanilla/version_*/records/affinity.csv 2>/dev/null)" || \
		{ echo "routing-comparison: no measured affinity in runs/quickstart/vanilla: run make quickstart first"; exit 2; }
	OMP_NUM_THREADS=1 $(PY) -m dtr_lab fit --config experiments/quickstart.yaml --config experiments/routing/affinity.yaml \
		--model.routing.init_args.source $(call newest_run,runs/quickstart/vanilla) \
		--trainer.logger.init_args.name affinity --trainer.enable_progress_bar false > runs/quickstart/affinity.log 2>&1 & \
	OMP_NUM_THREADS=1 $(PY) -m dtr_lab fit --config experiments/quickstart.yaml --config experiments/routing/switch.yaml \
		--trainer.logger.init_args.name switch; status=$$?; \
	wait $$! || { echo "the affinity run failed: see runs/quickstart/affinity.log"; exit 1; }; exit $$status
	$(PY) analysis/make_figures.py $(foreach r,vanilla dtr switch affinity,$(call newest_run,runs/quickstart/$(r))) \
		--out runs/quickstart/figures-routing
	@echo
	@echo "Figures: runs/quickstart/figures-routing/index.md"

# The tests also cover MLflow and W&B (tests/test_loggers.py): the optional loggers extra.
$(VENV)/.loggers: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[dev,loggers]"
	touch $@

# JupyterLab on notebooks/ (explore.ipynb, compare_routing.ipynb; they read $$DTR_RUNS, default runs/quickstart).
notebooks: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[notebooks]"
	$(PY) -m jupyter lab notebooks/

# One torch thread per process: the tests run small models (and subprocesses) where a second
# OpenMP thread only contends for the 2 cores.
test: $(VENV)/.loggers
	OMP_NUM_THREADS=1 $(PY) -m pytest

test-slow: $(VENV)/.loggers
	OMP_NUM_THREADS=1 $(PY) -m pytest -m slow

# The powered convergence study (analysis/reproduce.py, docs/studies.md): unrouted, DTR and Switch-DiT, 24 paired
# seeds by the plan fixed before the runs (docs/repro/core/PLAN.md), each scored 6 times along training; the runs
# are submitit jobs, two at a time here (--cluster slurm on a cluster); finished runs are reused, cut-off ones resume.
reproduce: $(VENV)/.installed
	$(PY) analysis/reproduce.py --out runs/repro --jobs 2 --threads 1

# R-TR and independent experts per interval to their plateau: 3000 steps beside unrouted and DTR, 5 seeds.
reproduce-long: $(VENV)/.installed
	$(PY) analysis/reproduce.py --out runs/repro --long --jobs 2 --threads 1

# Complementarity: Min-SNR and ANT-UW, each with and without DTR, 5 paired seeds, in the same study folder.
reproduce-complementarity: $(VENV)/.installed
	$(PY) analysis/reproduce.py --out runs/repro --seeds 5 --jobs 2 --threads 1 --complementarity

# DTR's paired gain against model width (DiT-T, DiT-XS) and training length (600-2400 steps): about
# 64 minutes on 2 CPU cores; finished runs are skipped.
scaling: $(VENV)/.installed
	$(PY) analysis/scaling.py --out runs/scaling --seeds 3 --jobs 2 --threads 1

# Every script in benchmarks/ (a file with a main guard; tests/test_benchmarks.py finds them the same way),
# one after the other (docs/benchmarks.md). BENCH_ARGS=--tiny: the suite's seconds-long smoke run of each.
# gpu_throughput.py says so and stops where no CUDA GPU is visible.
BENCH_ARGS ?=
bench: $(VENV)/.installed
	@set -e; for script in $$(grep -l '^if __name__ == "__main__":' benchmarks/*.py); do \
		echo "== $$script $(BENCH_ARGS)"; $(PY) $$script $(BENCH_ARGS); done

lint: $(VENV)/.installed
	$(PY) -m ruff check dtr_lab tests benchmarks analysis

clean-runs:
	rm -rf runs/quickstart
