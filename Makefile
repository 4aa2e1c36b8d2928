# Every target creates .venv and installs requirements.txt on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum requirements.txt | cut -d' ' -f1)

.PHONY: install run demo test test-slow lint format bench bench-full bazel-test clean

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

run: $(STAMP)
	$(PY) -m trainers.classify --config configs/digits.py --workdir runs/digits

demo: $(STAMP)
	$(PY) -m trainers.gumbel_demo --workdir runs/gumbel_demo

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# Benchmarks print a table and write JSON + Markdown to benchmarks/results/.
# `make bench` is the fast subset (< 10 min on 2 cores); `make bench-full` runs everything (many hours:
# the 20k-image CNN settings take 12-20 minutes per seed each with 2 workers (2026-12-08); run them in parts with
# `python -m benchmarks.quality --settings fmnist_cnn_pair40`; add MNIST_DIR=/path/to/mnist-idx for MNIST).
MNIST_DIR ?=

bench: $(STAMP)
	$(PY) -m benchmarks.sampler --rounds 20
	$(PY) -m benchmarks.step_overhead --rounds 5
	$(PY) -m benchmarks.quality --seeds 2 --settings digits_sym40,digits_pair40 --strategies fixed,softmax,slf,l2rw,joint --workers 2 --name quality_fast

bench-full: $(STAMP)
	test -d /usr/share/datasets/fashion-mnist || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; }
	$(PY) -m benchmarks.sampler --rounds 30
	$(PY) -m benchmarks.step_overhead --rounds 15
	$(PY) -m benchmarks.quality --seeds 5 --workers 2 --mnist_dir "$(MNIST_DIR)" \
		--variants "slf_no_tr:decision.trust_region=False"
	$(PY) -m benchmarks.commitment
	$(PY) -m benchmarks.binary_noise --seeds 5 --dataset breast_cancer
	$(PY) -m benchmarks.binary_noise --seeds 5 --dataset digits_lt5
	$(PY) -m benchmarks.pair_noise --settings digits_pair40 --seeds 10,11 \
		--variants "val256:decision.val_batch_size=256;joint:loss.strategy=joint"

# Bazel (offline: see third_party/bazel/README.md). Installs Debian's bazel-bootstrap 4.2.3 if missing.
bazel-test: $(STAMP)
	command -v bazel >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bazel-bootstrap; }
	PYTHON_BIN_PATH=$(CURDIR)/$(PY) bazel test --test_size_filters=small,medium --test_tag_filters=-slow //:all

clean:
	rm -rf runs .pytest_cache .ruff_cache
