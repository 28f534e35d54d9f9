"""Extraction throughput against the backbone's forward alone, same backbone, same images, same process.

    python tools/benchmark_extract.py                      # SD1.5 practical (random weights), 256 px, 8 images
    python tools/benchmark_extract.py --model test_sd_tiny --size 128 --images 32

Each round times ``DiffusionBackbone.forward`` over the images (decoded in advance), then
``tools/extract.py``'s loop over the same images as files (decoding, fp16 cast, safetensors shards
written atomically, the index); rounds alternate and the best of each is kept. Prints images/s of both
and their ratio (the target: extraction within 5% of the forward alone), and the share of the extraction
loop spent outside the forward, timed inside the same loop (immune to the machine's drift between rounds).
"""
import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diffbackbones import DiffusionBackbone
from diffbackbones.tasks.extraction.extract import run_extraction
from diffbackbones.utils.images import read_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='sd15')
    parser.add_argument('--activations', default='practical')
    parser.add_argument('--size', type=int, default=256)
    parser.add_argument('--images', type=int, default=8)
    parser.add_argument('--rounds', type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix='benchmark_extract_'))
    try:
        folder = work / 'images'
        folder.mkdir()
        rng = np.random.default_rng(0)
        for i in range(args.images):
            Image.fromarray(rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)).save(folder / f'{i:03d}.png')
        backbone = DiffusionBackbone(args.model, args.activations, pretrained=False)
        decoded = [read_image(p) for p in sorted(folder.glob('*.png'))]
        with torch.no_grad():
            backbone(decoded[0][None])  # warm-up
        forward, extract, overhead = [], [], []
        for r in range(args.rounds):
            start = time.perf_counter()
            with torch.no_grad():
                for image in decoded:
                    backbone(image[None])
            forward.append(args.images / (time.perf_counter() - start))
            result = run_extraction(args.model, folder, work / f'out{r}', pretrained=False, backbone=backbone).to_dict()
            extract.append(result['written'] / result['seconds'])
            overhead.append(1 - result['forward_seconds'] / result['seconds'])
        best_forward, best_extract = max(forward), max(extract)
        print(f'{args.model} {args.activations}, {args.size} px, {args.images} images, {torch.get_num_threads()} threads')
        print(f'forward alone : {best_forward:.3f} images/s   (rounds: {", ".join(f"{v:.3f}" for v in forward)})')
        print(f'extract       : {best_extract:.3f} images/s   (rounds: {", ".join(f"{v:.3f}" for v in extract)})')
        print(f'extract / forward = {best_extract / best_forward:.3f}  (target >= 0.95; rounds on a noisy machine '
              f'differ by more than the overhead itself)')
        print(f'time outside the forward in the extraction loop (decode, cast, shard writes): '
              f'{100 * min(overhead):.2f}% (rounds: {", ".join(f"{100 * v:.2f}%" for v in overhead)})')
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
