# Two commands on a fresh machine: `make demo` and `make test`. Both install what they need.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test bench bench-ablation bench-diagnosis bench-clustering bench-scale clean

install: $(STAMP)

# Re-runs only when setup.py changes: the stamp records a finished install.
$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,bench]"
	# FastReID's metadata pins torch 1.13.1: install it without its dependencies.
	$(PY) -m pip install -q --no-deps fastreid==1.4.0
	$(PY) -c "import cpcl_plugin; print('cpcl_plugin ready; compat patches:', cpcl_plugin.compat.applied())"
	touch $(STAMP)

demo: install
	$(PY) tools/train_net.py --config-file configs/CPCL/synthetic.yml

# Two workers (the CI machine's two cores), a file's tests on one (tests/conftest.py: made_once).
test: install
	$(PY) -m pytest -q tests -n 2 --dist loadfile --durations=15

# Every benchmark but those on request below; rewrites docs/benchmarks.md and docs/img/. Its
# quality section asks the question in brief: ITC, full CPCL and its departure full_tuned, 3
# seeds each, on data seed 0 (9 training runs of 12-20 minutes, two at a time). Estimated at about
# 80 minutes on two cores from world v2's run times; not yet timed end to end.
bench: install
	$(PY) benchmarks/run_all.py

# The world's validity criteria, every ablation row and the held-out data seeds 2 and 3: 87
# training runs, about 12 hours on two cores. Finished runs are kept per commit in logs/bench/, so
# it resumes where it stopped and reuses `make bench`'s runs of the same commit.
bench-ablation: install
	$(PY) benchmarks/run_all.py --only ablation

# The diagnosis runs (16 training runs, about 1.5-2 hours on world v2); rewrites their section of docs/benchmarks.md.
bench-diagnosis: install
	$(PY) benchmarks/run_all.py --only diagnosis

# The sparse clustering against FastReID's dense path, 5k to 68k rows (about 17 minutes).
bench-clustering: install
	$(PY) benchmarks/run_all.py --only clustering

# Pseudo labels at 68k (exact and approximate) and at a million rows (about 10 minutes, 10 GB);
# rewrites its section of docs/benchmarks.md.
bench-scale: install
	$(PY) benchmarks/run_all.py --only scale

clean:
	rm -rf $(VENV) logs *.egg-info
