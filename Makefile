# Set-up and everyday commands. Everything runs inside .venv in the repository root.
PY      := .venv/bin/python
PIP     := $(PY) -m pip
STAMP   := .venv/.installed
WHEELS  := ../shared/wheels
export HF_HUB_OFFLINE ?= 1
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: install test demo compare clean

install: $(STAMP)

$(STAMP): setup.py Makefile tools/install_mmcv.sh
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q 'setuptools<70' wheel
	# Pinned torch, served from this machine's disk; never let pip resolve an unpinned torch.
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	bash tools/install_mmcv.sh $(PY) $(WHEELS)
	# The pins ride along so the resolver can never swap torch or mmcv for another build.
	$(PIP) install -q -e '.[test,mmseg,docs]' torch==2.14.1 torchvision==0.29.1 mmcv==2.1.0
	$(PY) -c "import torch, diffusers, timm, mmcv.ops, mmseg.models; print('installed: torch', torch.__version__, 'diffusers', diffusers.__version__, 'timm', timm.__version__, 'mmcv', mmcv.__version__)"
	touch $(STAMP)

test: install
	$(PY) -m pytest tests -q -rs --durations=15

# The main job: frozen features of shapes_sd_tiny (a tiny latent diffusion model trained here and shipped
# in the package) + fusion + UPerHead, trained on the geometry variant of the embedded shapes set (CPU,
# minutes), evaluated (mIoU printed as mmseg does) and its predictions drawn under work_dirs/demo/pictures.
DEMO := configs/toy/upernet_shapes-sd-tiny-practical_1xb8-300_shapes-geometry-128x128.py
demo: install
	$(PY) tools/make_shapes.py data/shapes-geometry --variant geometry
	$(PY) tools/train.py $(DEMO) --work-dir work_dirs/demo
	$(PY) tools/test.py $(DEMO) work_dirs/demo/iter_300.pth --work-dir work_dirs/demo/test --show-dir work_dirs/demo/pictures
	@echo "predictions drawn in work_dirs/demo/pictures"

# The same recipe with the shipped (trained) and with random weights, on both shapes variants.
compare: install
	$(PY) tools/compare.py --work-dir work_dirs/compare

clean:
	rm -rf .venv work_dirs build *.egg-info
