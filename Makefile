# Quick start: `make demo` (set up, then replay the embedded default scenario) and `make test`.
SHELL := /bin/bash
OUT ?= out/demo
PYTEST_ARGS ?=
RUN := set +u; . scripts/ros_env.sh; set -u;

.PHONY: setup demo test bench bench-sparse bench-lidar bench-bev clean
setup:
	@bash scripts/setup.sh

demo: setup
	@$(RUN) .venv/bin/perception-stack replay --out $(OUT)
	@echo "open $(OUT)/report.html"

test: setup
	@$(RUN) bash scripts/run_tests.sh $(PYTEST_ARGS)

bench: setup
	@$(RUN) .venv/bin/python benchmarks/codecs.py && .venv/bin/python benchmarks/ros_hop.py

# spconv 2.3.8 is only the benchmark's peer: installed beside the venv, never into it (its `lark`
# would replace the ROS wheels' `lark-parser` module of the same name).
bench-sparse: setup
	@[ -d /tmp/spconv-site/spconv ] || { .venv/bin/pip install -q --target /tmp/spconv-site spconv==2.3.8 && rm -rf /tmp/spconv-site/numpy*; }
	@$(RUN) SPCONV_SITE=/tmp/spconv-site .venv/bin/python benchmarks/sparse_conv.py

# LiDAR branch end to end (torch, onnxruntime, spconv backbone); BENCH_ARGS e.g. --weights DIR --reps 11
bench-lidar: setup
	@[ -d /tmp/spconv-site/spconv ] || { .venv/bin/pip install -q --target /tmp/spconv-site spconv==2.3.8 && rm -rf /tmp/spconv-site/numpy*; }
	@$(RUN) SPCONV_SITE=/tmp/spconv-site .venv/bin/python benchmarks/lidar_branch.py $(BENCH_ARGS)

# BEV pooling: precomputed geometry vs naive lift-splat (issue 11); BENCH_ARGS e.g. --strides 8 --reps 11 --onnx
bench-bev: setup
	@$(RUN) nice .venv/bin/python benchmarks/bev_pool.py $(BENCH_ARGS)

# Robustness study (issue 12): each injected sensor fault, fused vs single branches, uncertainty AUROC,
# weights, fallback; writes out/robustness/{robustness.json,report.html}. BENCH_ARGS e.g. --quick
.PHONY: bench-robustness
bench-robustness: setup
	@$(RUN) nice -n 10 .venv/bin/python benchmarks/robustness.py $(BENCH_ARGS)

clean:
	rm -rf out ros_ws/build ros_ws/install ros_ws/log ros_ws/colcon.log
