"""Copy the paper-parity reference fixtures into the repository, shrunk, so a user's clone runs them too.

    python tools/shrink_reference_fixtures.py ../shared/fixtures/reference-activations \\
        tests/fixtures/reference-activations

For each topology kept (sd, pixart, flux) it copies the tiny denoiser (config and fp16 weights, as they are:
the reference activations were computed from exactly these weights, by the paper's own code on diffusers
0.32.2, so they cannot be made again here), its inputs, the full ``activations.json`` (every layer id and
shape: the catalog test reads it) and, of ``activations.safetensors``, for UNets one activation of each
layer-id pattern (the smallest, e.g. one ``...-vit-block#-self-k``) plus the paper's presets' activations,
the few a test reads by name and the noise prediction; the transformers' files are small and are kept whole. The values are copied bit
for bit (fp32). SDXL's topology is left out: its 10 MB of weights are the bulk of the fixtures, and the SD
topology exercises the same UNet walker and hooks (its tests skip without the full set and say so).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

KEEP = {'sd': 'unet', 'pixart': 'transformer', 'flux': 'transformer'}
# the paper's SD1.5 presets (DESIGN.md): practical and legacy
SD_PRESET_NAMES = {'up-level3-repeat0-vit-block0-self-k', 'up-level2-repeat1-vit-block0-cross-q',
                   'up-level1-repeat1-vit-block0-cross-q', 'up-level1-repeat2-res-out', 'up-level2-upsampler-out',
                   'up-level3-repeat2-vit-out', 'up-level1-upsampler-out', 'up-level0-upsampler-out'}
# and what a test reads by name (test_capture: the first attention block's query beside its map)
TEST_NAMES = {'down-level0-repeat0-vit-block0-self-q'}


def unet_subset(shapes: dict[str, list[int]]) -> list[str]:
    """One activation per layer-id pattern (digits as wildcards), the smallest; the presets; the output."""
    smallest: dict[str, str] = {}
    for name, shape in shapes.items():
        pattern = re.sub(r'\d+', '#', name)
        if pattern not in smallest or math.prod(shape) < math.prod(shapes[smallest[pattern]]):
            smallest[pattern] = name
    keep = set(smallest.values()) | ((SD_PRESET_NAMES | TEST_NAMES) & set(shapes))
    keep |= {n for n in shapes if n.endswith('noise-pred')}
    return [n for n in shapes if n in keep]  # in execution order


def shrink(source: Path, target: Path) -> None:
    for topology, denoiser in KEEP.items():
        src, dst = source / topology, target / topology
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src / denoiser, dst / denoiser)
        for name in ('inputs.safetensors', 'activations.json'):
            shutil.copyfile(src / name, dst / name)
        activations = load_file(src / 'activations.safetensors')
        if denoiser == 'unet':
            names = unet_subset(json.loads((src / 'activations.json').read_text()))
            activations = {n: activations[n].contiguous() for n in names}
        save_file(activations, dst / 'activations.safetensors')
        print(f'{topology}: {len(activations)} activations, '
              f'{sum(p.stat().st_size for p in dst.rglob("*") if p.is_file()) / 1e6:.1f} MB')
    readme = source / 'README.md'
    if readme.exists():
        (target / 'README.md').write_text(readme.read_text() + '\n' + '\n'.join([
            '## This copy', '', 'Shrunk by `tools/shrink_reference_fixtures.py` (its docstring says what was kept);',
            'the full set stays in the project\'s `../shared/fixtures`, which the tests prefer when present.', '']))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('source', type=Path, help='the full reference-activations folder')
    parser.add_argument('target', type=Path, help='where the shrunk copy goes')
    args = parser.parse_args()
    shrink(args.source, args.target)


if __name__ == '__main__':
    main()
