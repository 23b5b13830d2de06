# make demo: set up and train the default SAE on the embedded model and text. make test: set up and run the tests.
.PHONY: setup demo test test-integration

setup:
	scripts/setup.sh

demo: setup
	.venv/bin/python train.py

test: setup
	.venv/bin/python -m pytest -q

test-integration: setup
	.venv/bin/python -m pytest -q -m integration
