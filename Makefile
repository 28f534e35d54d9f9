# Set-up and everyday commands. Everything runs inside .venv in the repository root.
PY      := .venv/bin/python
PIP     := $(PY) -m pip
STAMP   := .venv/.installed
WHEELS  := ../shared/wheels
export HF_HUB_OFFLINE ?= 1
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: install test demo compare depth compare-depth detect clean

install: $(STAMP)

$(STAMP): setup.py Makefile tools/install_mmcv.sh
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q 'setuptools<70' wheel
	# Pinned torch, served from this machine's disk; never let pip resolve an unpinned torch.
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	bash tools/install_mmcv.sh $(PY) $(WHEELS)
	# The pins ride along so the resolver can never swap torch or mmcv for another build.
	$(PIP) install -q -e '.[test,mmseg,docs,quant]' torch==2.14.1 torchvision==0.29.1 mmcv==2.1.0
	$(PY) -c "import torch, diffusers, timm, mmcv.ops, mmseg.models, mmdet.models, torchao, gguf; print('installed: torch', torch.__version__, 'diffusers', diffusers.__version__, 'timm', timm.__version__, 'mmcv', mmcv.__version__, 'mmdet', mmdet.__version__)"
	touch $(STAMP)

test: install
	$(PY) -m pytest tests -q -rs --durations=15

# The main job: one segmentation recipe (UPerHead + fusion on frozen 'practical' features) trained twice on the
# texture variant of the embedded shapes set, on the features of shapes_sd_tiny (a tiny latent diffusion model
# trained here and shipped in the package) and on those of the same architecture with random weights; one
# table of val mIoU per class, and input | ground truth | trained | random drawn per val image (CPU, ~2.5 min).
DEMO := configs/toy/upernet_shapes-sd-tiny-practical_1xb8-300_shapes-128x128.py
demo: install
	$(PY) tools/demo.py $(DEMO) --data data/shapes --work-dir work_dirs/demo

# The same recipe on each shipped model (shapes_sd_tiny, shapes_flux_tiny) with trained and with random weights,
# and on the two combined (one shared VAE), on both shapes variants: one table of val mIoU (about 24 minutes).
compare: install
	$(PY) tools/compare.py --work-dir work_dirs/compare

# Depth: shapes_sd_tiny fine-tuned with mmseg's own VPD recipe (DepthEstimator + VPDDepthHead) on the embedded
# shapes-depth set, through mmseg's own tools/train.py and tools/test.py; input | truth | prediction drawn.
DEPTH := configs/depth/vpd-diffusers_shapes-sd-tiny_1xb8-300_shapes-depth-128x128.py
MMSEG_TOOLS = $(shell $(PY) -c "import mmseg, os; print(os.path.join(os.path.dirname(mmseg.__file__), '.mim', 'tools'))")
depth: install
	$(PY) tools/make_shapes.py data/shapes-depth --task depth
	$(PY) $(MMSEG_TOOLS)/train.py $(DEPTH) --work-dir work_dirs/depth
	$(PY) $(MMSEG_TOOLS)/test.py $(DEPTH) work_dirs/depth/iter_300.pth --work-dir work_dirs/depth/test \
		--show-dir work_dirs/depth/pictures --cfg-options default_hooks.visualization.interval=5
	@echo "input | ground truth | prediction drawn in work_dirs/depth/pictures"

# Detection and instance segmentation: MMDetection's own Mask R-CNN recipe (at CPU scale) on the frozen features
# of shapes_sd_tiny and on random ones, trained and tested through mmdet's own tools/train.py and tools/test.py
# on the embedded shapes-instances set (COCO format); COCO bbox and segm mAP of both, predicted masks drawn.
detect: install
	$(PY) tools/detect.py --work-dir work_dirs/detect

# The depth recipe's measured table (README, "Depth"): trained vs random weights vs a constant, frozen vs
# fine-tuned vs LoRA, fixed prompt vs learned conditioning, 300 iterations each.
compare-depth: install
	$(PY) tools/compare_depth.py --work-dir work_dirs/compare-depth

clean:
	rm -rf .venv work_dirs build *.egg-info
