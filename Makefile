# Two commands on a fresh machine: `make run` (set up, then simulate the quickstart) and `make test` (lint,
# the import-layer contract, then the tests).
# Both create .venv from the pins in requirements.txt when it is missing or older than the pins.
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test bench accuracy clean

$(STAMP): requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --no-cache-dir -r requirements.txt
	$(VENV)/bin/pip install --quiet --no-deps -e .
	@# the CPU wheel of torch only: a CUDA build would mean gigabytes of nvidia-* packages
	$(PY) -c "import sys, torch; sys.exit(torch.version.cuda is not None)"
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/moesim run scenarios/quickstart.yaml

test: $(STAMP)
	$(VENV)/bin/ruff check moesim tests benchmarks calibrate app
	$(VENV)/bin/lint-imports --no-cache
	@# the dashboard's browser test drives Debian's chromium (never `playwright install`); where apt cannot
	@# install it, that test skips instead of failing the run
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
		|| echo "chromium could not be installed: the dashboard's browser test will skip"
	TRITON_INTERPRET=1 MPLBACKEND=Agg $(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_scale.py

# re-measure the validation set after a cost-model change and commit docs/accuracy.* with it
accuracy: $(STAMP)
	$(VENV)/bin/moesim accuracy validation --baseline docs/accuracy.json --force

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
