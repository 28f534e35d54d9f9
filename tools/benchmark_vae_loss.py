"""What the texture-energy term costs a VAE training step of diffbackbones train-diffusion, against the same step
without it, timed alternately in one process (so a machine that is slower in one round cancels out).

    python tools/benchmark_vae_loss.py            # 5 rounds x 10 steps each way, the recipe's batch and crop
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from diffbackbones.training.shapes_sd import VAE_CONFIG, texture_loss


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--steps', type=int, default=10, help='steps per round and variant')
    parser.add_argument('--batch', type=int, default=16)
    parser.add_argument('--crop', type=int, default=64)
    args = parser.parse_args(argv)
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    vae = AutoencoderKL.from_config(VAE_CONFIG).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-4)
    x0 = torch.rand(args.batch, 3, args.crop, args.crop) * 2 - 1

    def steps(texture_weight: float) -> float:
        start = time.perf_counter()
        for _ in range(args.steps):
            posterior = vae.encode(x0).latent_dist
            recon = vae.decode(posterior.sample()).sample
            loss = (recon - x0).abs().mean() + 1e-4 * posterior.kl().mean() / x0[0].numel()
            if texture_weight:
                loss = loss + texture_weight * texture_loss(recon, x0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return (time.perf_counter() - start) / args.steps

    steps(0.0)  # warm-up
    ratios, base, with_term = [], [], []
    for _ in range(args.rounds):
        a, b = steps(0.0), steps(1.0)
        base.append(a)
        with_term.append(b)
        ratios.append(b / a)
    print(f'{torch.get_num_threads()} threads, batch {args.batch} x {args.crop}x{args.crop} px')
    print(f'VAE step, L1 + KL:                {statistics.median(base) * 1e3:8.1f} ms (median of {args.rounds} rounds)')
    print(f'VAE step, L1 + KL + texture term: {statistics.median(with_term) * 1e3:8.1f} ms')
    print(f'ratio (paired per round): median {statistics.median(ratios):.3f}x, range {min(ratios):.3f}-{max(ratios):.3f}')


if __name__ == '__main__':
    main()
