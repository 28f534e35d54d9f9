# Set-up and everyday commands. Everything runs inside .venv in the repository root.
PY      := .venv/bin/python
PIP     := $(PY) -m pip
STAMP   := .venv/.installed
WHEELS  := ../shared/wheels
export HF_HUB_OFFLINE ?= 1
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: install test demo clean

install: $(STAMP)

$(STAMP): setup.py Makefile tools/install_mmcv.sh
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q 'setuptools<70' wheel
	# Pinned torch, served from this machine's disk; never let pip resolve an unpinned torch.
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	bash tools/install_mmcv.sh $(PY) $(WHEELS)
	# The pins ride along so the resolver can never swap torch or mmcv for another build.
	$(PIP) install -q -e '.[test,mmseg]' torch==2.14.1 torchvision==0.29.1 mmcv==2.1.0
	$(PY) -c "import torch, diffusers, timm, mmcv.ops, mmseg.models; print('installed: torch', torch.__version__, 'diffusers', diffusers.__version__, 'timm', timm.__version__, 'mmcv', mmcv.__version__)"
	touch $(STAMP)

test: install
	$(PY) -m pytest tests -q -rs

# The main job: a tiny diffusion backbone + UPerHead trained on the embedded shapes set (CPU, minutes),
# evaluated (mIoU printed as mmseg does) and its predictions drawn under work_dirs/demo/pictures.
TOY := configs/toy/upernet_test-sd-tiny-practical_1xb8-300_shapes-128x128.py
demo: install
	$(PY) tools/make_shapes.py data/shapes
	$(PY) tools/train.py $(TOY) --work-dir work_dirs/demo
	$(PY) tools/test.py $(TOY) work_dirs/demo/iter_300.pth --work-dir work_dirs/demo/test --show-dir work_dirs/demo/pictures
	@echo "predictions drawn in work_dirs/demo/pictures"

clean:
	rm -rf .venv work_dirs build *.egg-info
