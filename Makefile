# Two commands from a fresh clone:
#   make demo   - federated LoRA on BBC News with MiniLM (installs into .venv first)
#   make test   - lint, types and the test suite (installs into .venv first)
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup lock demo demo-llm test test-fast lint clean

setup:
	@bash scripts/setup.sh

# Re-resolve every dependency and rewrite requirements.lock (pins + sha256); review and commit the diff.
lock:
	@bash scripts/lock.sh

demo: setup
	$(BIN)/privfed run configs/demo.toml --out runs/demo-$$(date +%Y%m%d-%H%M%S)

demo-llm: setup
	$(BIN)/privfed run configs/smollm2_fortunes.toml --out runs/smollm2-$$(date +%Y%m%d-%H%M%S)

lint: setup
	$(BIN)/ruff check privfed attacks tests examples benchmarks
	$(BIN)/ruff format --check privfed attacks tests examples benchmarks
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
