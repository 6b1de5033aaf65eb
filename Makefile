# Two commands do all the set-up on a fresh machine (see README):
#   make demo   -- create .venv, install d2lite, generate the shapes data, train + evaluate RetinaNet on CPU
#                  (on shapes_val, then on shapes_eval)
#   make test   -- create .venv, install d2lite, run the full test suite
VENV  ?= .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_CONFIG ?= configs/quick/retinanet_R_18_FPN_shapes.py

.PHONY: setup demo test test-quick test-1thread lint rtmdet-demo

$(STAMP): setup.py requirements.txt projects/RTMDet/pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -e ".[tests,export]" -e projects/RTMDet
	touch $(STAMP)

setup: $(STAMP)

DEMO_OUT ?= output/retinanet_R_18_FPN_shapes

# Train + evaluate on shapes_val, then evaluate the final model on shapes_eval (a second
# generator's images, never trained on: does the model generalise?). --resume: running it
# again continues an interrupted demo, or re-evaluates a finished one; it never retrains
# into the same directory (delete $(DEMO_OUT) to start over).
# --num-gpus 2 on a CPU: 2 training processes of one thread each, 1.5x faster than one process
# of two threads (benchmarks/README.md).
demo: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(PY) tools/lazyconfig_train_net.py --config-file $(DEMO_CONFIG) --num-gpus 2 --resume \
		train.output_dir=$(DEMO_OUT)
	OMP_WAIT_POLICY=PASSIVE $(PY) tools/lazyconfig_train_net.py --config-file $(DEMO_CONFIG) --eval-only \
		train.init_checkpoint=$(DEMO_OUT)/model_final.pth train.output_dir=$(DEMO_OUT)/shapes_eval \
		dataloader.test.dataset.names=shapes_eval

rtmdet-demo: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(PY) tools/lazyconfig_train_net.py --config-file projects/RTMDet/configs/rtmdet_tiny_shapes.py

test: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest --durations=25

test-quick: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -m "not slow"

# The slow (training) tests again with one intra-op thread (except those marked onepass): a test that holds for one float
# path only fails here, not on a user's machine with another CPU or thread count.
test-1thread: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -m "slow and not onepass" --threads 1

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
