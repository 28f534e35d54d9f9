"""Which memory format is faster, part by part: the measurement behind ``channels_last=None``.

    python tools/benchmark_formats.py --model sd15 --size 256

Two backbones with the same weights, ``channels_last=False`` and ``channels_last=True``; the VAE encoder
(``encode``) and the denoiser up to the last activation (``extract``) of each are timed interleaved in
one process, median of the rounds, and the ratio default/channels-last is printed per part (above 1:
channels-last is faster). ``channels_last=None`` picks channels-last for the VAE encoder on the CPU
because of this measurement; rerun it on your device before choosing ``True``.
"""
from __future__ import annotations

import argparse
import statistics

import torch

from diffbackbones.tasks.benchmarking import machine, run_once
from diffbackbones import DiffusionBackbone
from diffbackbones.models.zoo import MODELS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='test_sd_tiny', choices=sorted(MODELS))
    parser.add_argument('--preset', default='practical')
    parser.add_argument('--size', type=int, default=None, help="square image side (default: the model's own)")
    parser.add_argument('--dtype', default='fp32', choices=['fp32', 'fp16', 'bf16'])
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--reps', type=int, default=5, help='timed rounds (median reported)')
    parser.add_argument('--threads', type=int, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    backbones = {fmt: DiffusionBackbone(args.model, args.preset, pretrained=False, dtype=args.dtype,
                                        channels_last=fmt == 'channels-last').to(device)
                 for fmt in ('default', 'channels-last')}
    size = args.size or backbones['default'].spec.image_size
    images = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device) * 2 - 1
    hw = (size, size)
    with torch.inference_mode():
        latents = backbones['default'].encode(images)
        variants = {(part, fmt): fn for fmt, bb in backbones.items() for part, fn in (
            ('VAE encoder', lambda bb=bb: bb.encode(images)),
            ('denoiser to the last activation', lambda bb=bb: bb.extract(latents, hw)))}
        times = {key: [] for key in variants}
        for fn in variants.values():  # warm-up
            fn()
        for _ in range(args.reps):
            for key, fn in variants.items():
                times[key].append(run_once(fn, device)[1])
    print(f'machine: {machine(device)}')
    print(f'model {args.model} ({args.preset}, random weights), {args.dtype}, 1 x {size}x{size}, {args.reps} rounds\n')
    print(f'{"part":<34} {"default ms":>11} {"channels-last ms":>17} {"default/channels-last":>22}')
    for part in dict.fromkeys(part for part, _ in variants):
        default, cl = (statistics.median(times[part, fmt]) for fmt in ('default', 'channels-last'))
        print(f'{part:<34} {default * 1e3:>11.2f} {cl * 1e3:>17.2f} {default / cl:>21.2f}x')


if __name__ == '__main__':
    main()
