# Two commands on a fresh machine: `make demo` and `make test`. Everything runs inside .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_CONFIG := configs/demo.yaml
# The torch requirement, written once in requirements.txt and installed first on its own.
TORCH_PIN := $(shell grep -E '^torch[<>=!~ ]' requirements.txt)
LAUNCH := $(BIN)/accelerate launch --config_file configs/accelerate/cpu_1proc.yaml
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test lint install demo-assets clean-demo device-wheels app app-install test-app

$(BIN)/.installed: requirements.txt requirements-dev.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	# torch first with its own pin: a range that admits 2.14 pulls a multi-GB CUDA build on CPU machines.
	test -n '$(TORCH_PIN)' || { echo 'requirements.txt has no torch line'; exit 1; }
	$(BIN)/pip install --quiet "$(TORCH_PIN)"
	$(BIN)/pip install --quiet -r requirements.txt -r requirements-dev.txt
	touch $@

install: $(BIN)/.installed

demo-assets: install
	$(BIN)/python -m demo.assets --output_dir demo_assets

demo: demo-assets
	$(LAUNCH) trainer.py --config $(DEMO_CONFIG)
	$(LAUNCH) val_inference.py --config $(DEMO_CONFIG) --oracle vae_roundtrip
	$(LAUNCH) val_inference.py --config $(DEMO_CONFIG)

# Two workers: most test time is single-threaded subprocesses (accelerate launch, imports); a test module stays on one
# worker (--dist loadfile), so its module-scoped trained runs are built once. TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2
test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean-demo:
	rm -rf demo_assets outputs/demo

# The web demo: gradio and selenium go into .venv-app, which sees .venv's packages through a .pth file, so gradio's
# pillow<13 pin never touches the core install. `make app` serves the model of `make demo`, exported afresh.
APP_VENV := .venv-app
$(APP_VENV)/.installed: $(BIN)/.installed requirements-app.txt
	test -d $(APP_VENV) || $(BIN)/python -m venv $(APP_VENV)
	$(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" \
		> "$$($(APP_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/core_venv.pth"
	$(APP_VENV)/bin/pip install --quiet -r requirements-app.txt
	touch $@

app-install: $(APP_VENV)/.installed

app: app-install
	test -f outputs/demo/transformer/config.json || { echo "no demo model: run 'make demo' first"; exit 1; }
	$(BIN)/python export.py --transformer_path outputs/demo --output outputs/demo/pipeline
	$(APP_VENV)/bin/python app.py --model outputs/demo/pipeline

test-app: app-install
	$(APP_VENV)/bin/python -m pytest -q tests/test_app.py

# What bench/gpu_rows.sh needs on the GPU machine beyond its image (torch, accelerate, transformers are there):
# diffusers, and deepspeed (no binary wheel on PyPI: built here, pure Python; its ops compile there on first use)
# with the pydantic pair its config needs. Versions as in requirements.txt and this venv.
device-wheels: install
	$(BIN)/pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 importlib_metadata==10.2.0 hjson==3.1.0 \
		pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
		typing_extensions==4.16.0
	$(BIN)/pip wheel --quiet --no-deps --no-build-isolation -w .whl deepspeed==0.19.8
