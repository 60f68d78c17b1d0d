# Quick start: `make demo` (set up, then replay the embedded default scenario) and `make test`.
SHELL := /bin/bash
OUT ?= out/demo
PYTEST_ARGS ?=
RUN := set +u; . scripts/ros_env.sh; set -u;

.PHONY: setup demo test bench clean
setup:
	@bash scripts/setup.sh

demo: setup
	@$(RUN) .venv/bin/perception-stack replay --out $(OUT)
	@echo "open $(OUT)/report.html"

test: setup
	@$(RUN) bash scripts/run_tests.sh $(PYTEST_ARGS)

bench: setup
	@$(RUN) .venv/bin/python benchmarks/codecs.py && .venv/bin/python benchmarks/ros_hop.py

clean:
	rm -rf out ros_ws/build ros_ws/install ros_ws/log ros_ws/colcon.log
