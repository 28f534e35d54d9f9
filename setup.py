"""diffbackbones: diffusion-model activations as timm / MMSegmentation backbones."""
import re
import runpy

from setuptools import find_packages, setup

# one version, kept in the package (diffbackbones/version.py)
VERSION = re.search(r"__version__ = '([^']+)'", open('diffbackbones/version.py').read()).group(1)
# the oldest versions the suite has passed on, also checked by `import diffbackbones` (diffbackbones/requirements.py)
MINIMUM_VERSIONS = runpy.run_path('diffbackbones/requirements.py')['MINIMUM_VERSIONS']

setup(
    name='diffbackbones',
    version=VERSION,
    description='Any diffusers denoiser as a multi-scale feature backbone for timm and MMSegmentation',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.10',
    packages=find_packages(include=['diffbackbones', 'diffbackbones.*']),
    # Everything the package reads at run time ships inside it (wheel and sdist; MANIFEST.in for the
    # latter): the embedded architecture configs, and the shipped weights folder when there is one.
    package_data={'diffbackbones': ['models/model_configs/*/*.json', 'models/weights/*/*', 'models/weights/*/*/*']},
    # `diffbackbones COMMAND`: the package's tasks (screen, probe, extract, ...), as `python -m diffbackbones` too
    entry_points={'console_scripts': ['diffbackbones = diffbackbones.commands:main']},
    install_requires=[
        # torch, diffusers, transformers, timm, peft, accelerate: >= the oldest versions the suite has passed on
        # (MINIMUM_VERSIONS). torch is pinned by the Makefile (torch==2.14.1 torchvision==0.29.1); a looser
        # requirement here would let pip pull a multi-GB CUDA build on machines without it.
        *(f'{name}>={version}' for name, version in MINIMUM_VERSIONS.items()),
        'safetensors',
        'huggingface_hub',
        'tqdm',
        'numpy',
        'pillow',
        'matplotlib',  # the screen's plots (ScreenReport.plot)
        'opencv-python-headless',  # the ControlNet's built-in canny preprocessor (control=dict(image='canny'))
    ],
    extras_require={
        'test': ['pytest>=7', 'pytest-timeout', 'import-linter>=2.17,<3'],  # the layers contract (setup.cfg)
        # mmcv 2.1.0 needs compiled ops; the Makefile installs it from ../shared/wheels or source.
        # setuptools < 81: mmengine 0.10 resolves a config's `_base_ = ['mmseg::...']` (configs/depth/
        # inherit mmseg's shipped VPD configs so) through pkg_resources, which newer setuptools no longer
        # ship; >= 77.0.3 is torch 2.14's own floor.
        # mmdet: mmseg's Mask2Former/MaskFormer heads import it, and its detectors take the backbone too;
        # pycocotools, shapely, terminaltables, six and scipy are what mmdet imports.
        'mmseg': ['mmengine==0.10.7', 'mmsegmentation==1.2.2', 'mmdet==3.3.0', 'pycocotools', 'shapely',
                  'terminaltables', 'six', 'scipy', 'ftfy', 'regex', 'setuptools>=77.0.3,<81'],
        'docs': ['mkdocs==1.6.1', 'mkdocs-material>=9.8.2', 'mkdocstrings[python]>=1.0.8'],
        # quantized denoisers (denoiser=dict(quantization='int8' | 'float8'), pretrained='x.gguf'); nf4 needs
        # bitsandbytes and a CUDA GPU, so it is not in the extra
        'quant': ['torchao==0.18.0', 'gguf>=0.19.0'],
    },
)
