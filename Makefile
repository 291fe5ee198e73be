# One way to set up, run and test ba_perception. See README.md.
.PHONY: setup test test-quick lint demo clean
VENV := .venv
setup:
	bash scripts/setup.sh
test: setup
	bash scripts/test.sh
test-quick: setup
	$(VENV)/bin/python -m pytest -q -m "not dds and not slow"
lint: setup
	bash scripts/lint.sh
demo: setup
	$(VENV)/bin/ba-perception demo
clean:
	rm -rf build $(VENV) out
