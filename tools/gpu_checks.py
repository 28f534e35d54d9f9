"""The GPU checks of quantization, offload and FSDP, as one short script for a lent GPU (nothing here runs on a CPU).

    python tools/gpu_checks.py [--model sdxl] [--size 1024] [--reps 5]

1. float8 (torchao) and nf4 (bitsandbytes, needs ``pip install bitsandbytes``) against bf16 on the same random
   weights: relative error and cosine of the features per level, time ratio, parameter memory.
2. Offload (``denoiser=dict(offload='block')``, diffusers' group offloading) against the denoiser on the GPU:
   features identical, time ratio, peak GPU memory.
3. FSDP on NCCL: the sharded fine-tuning toy on one GPU rank through mmengine's FlexibleRunner
   (``torchrun --nproc_per_node=1 tools/train.py configs/toy/fcn_..._fsdp-...py``, device_id = the local rank).
Prints the card with every number.
"""
import argparse
import statistics
import subprocess
import sys
import time

import torch

from diffbackbones import DiffusionBackbone
from diffbackbones.tasks.fidelity import feature_fidelity

FSDP_TOY = 'configs/toy/fcn_shapes-sd-tiny-finetune_fsdp-2xb2-4_shapes-64x64.py'


def timed(backbone, images, reps):
    """Median seconds of a forward, and the peak GPU memory of the calls (GiB)."""
    torch.cuda.reset_peak_memory_stats()
    times = []
    with torch.no_grad():
        backbone(images)
        for _ in range(reps):
            torch.cuda.synchronize()
            start = time.perf_counter()
            backbone(images)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return statistics.median(times), torch.cuda.max_memory_allocated() / 2 ** 30


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='sdxl')
    parser.add_argument('--size', type=int, default=1024)
    parser.add_argument('--reps', type=int, default=5)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit('tools/gpu_checks.py needs a CUDA GPU')
    print(f'card: {torch.cuda.get_device_name()}, torch {torch.__version__}')
    images = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)).cuda() * 2 - 1
    build = lambda **denoiser: DiffusionBackbone(args.model, pretrained=False, dtype='bf16', denoiser=denoiser)
    reference = build().cuda()
    base_time, base_peak = timed(reference, images, args.reps)
    print(f'bf16: {base_time * 1e3:.1f} ms, peak {base_peak:.2f} GiB')
    for fmt in ('float8', 'nf4'):
        try:
            quantized = build(quantization=fmt).cuda()
        except RuntimeError as e:
            print(f'{fmt}: skipped ({e})')
            continue
        levels = feature_fidelity(reference, quantized, [images])
        seconds, peak = timed(quantized, images, args.reps)
        print(f'{fmt}: relative error per level {[round(level["relative_error"], 4) for level in levels]}, cosine '
              f'{[round(level["cosine"], 5) for level in levels]}, time {seconds / base_time:.3f}x bf16, peak '
              f'{peak:.2f} GiB')
        del quantized
    offloaded = build(offload='block').cuda()
    with torch.no_grad():
        same = all(torch.equal(a, b) for a, b in zip(offloaded(images), reference(images)))
    seconds, peak = timed(offloaded, images, args.reps)
    print(f'offload (block): features identical {same}, time {seconds / base_time:.3f}x, peak {peak:.2f} GiB')
    done = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=1', 'tools/train.py',
                           FSDP_TOY, '--launcher', 'pytorch', '--work-dir', 'work_dirs/gpu-fsdp', '--cfg-options',
                           'strategy.model_wrapper.device_id=0', 'env_cfg.dist_cfg.backend=nccl'],
                          capture_output=True, text=True)
    losses = [line.split('loss: ')[1].split()[0] for line in done.stdout.splitlines() + done.stderr.splitlines()
              if 'Iter(train)' in line]
    print(f'FSDP on NCCL (1 rank): exit {done.returncode}, losses {losses}')


if __name__ == '__main__':
    main()
