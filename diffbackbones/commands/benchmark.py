"""Time a DiffusionBackbone against the full forward it replaces and against the truncation floor.

    diffbackbones benchmark test_sd_tiny --size 64 --reps 2
    diffbackbones benchmark sd15 --preset practical --size 256
    diffbackbones benchmark sdxl --size 512 --reps 3
    diffbackbones benchmark sd21 --dift                      # DIFT-style feature: up_blocks[1] output
    diffbackbones benchmark sd15 --inversion                 # + (i): DDIM inversion against sampled noise
    diffbackbones benchmark sd15 --control                   # + (k): a ControlNet against none
    diffbackbones benchmark sd15 --quantization int8         # + (q): torchao int8 weight-only against (c)
    diffbackbones benchmark flux_dev --size 256              # too big here: timed on test_flux_tiny,
                                                             # parameters counted at full size (meta)

Four variants, same input batch, same dtype, all without autograd:
  (a) full      VAE encode + the COMPLETE denoiser forward + ActivationCapture hooks (no early stop):
                what the original implementation does, with its VAE in the default memory format.
  (b) floor     the backbone's VAE encode + the denoiser cut right after the deepest requested
                activation by one hook that raises, with no capture machinery: the cheapest way to
                get that far with the same kernels, so c/b is the cost of the capture machinery.
  (c) backbone  DiffusionBackbone.forward itself.
  (d) cached    (c) with a warm in-memory latent cache (evaluation, sweeps over layers or timesteps).
  (e) compiled  with --compile: a second backbone, same weights, built with compile=True (torch.compile;
                compiled during the untimed warm-up).
  (i) inversion with --inversion: (c) with noise=dict(type='ddim-inversion', t=<t>, inversion_steps=N)
                in place of sampled noise, on the same weights: the latent is walked to t with the whole
                denoiser first (ceil(t / (1000 // N)) forwards: 5 at t=50, N=100), so i/c is its cost.
  (k) control   with --control: (c) with a ControlNet (control='random': the denoiser's ControlNet
                architecture, seeded random weights, canny control image) swapped into the same backbone,
                same denoiser: the ControlNet runs whole, then the denoiser with its early exit, so k/c
                is its cost (its time includes the OpenCV canny, its FLOPs do not). When every requested
                activation lies in the down blocks / mid block, which never see its residuals, the backbone
                skips it (control.consumed False): k/c ~1.
  (q) quantized with --quantization int8|float8: a second backbone, same weights, its denoiser quantized
                (denoiser=dict(quantization=...)); q/c is its time against (c), and its features' error is
                printed (quantization changes them; the other variants must not).
Variants run interleaved, in alternating order (a, b, c, d, d, c, b, a, ...), so machine noise hits
all alike. The table reports the median time over the rounds and the largest peak memory growth of a
call; each ratio is the median of the per-round ratios (paired: slow and fast rounds cancel), with its
range. FLOPs come from one extra counting pass per variant, and each variant's achieved FLOP/s is put
against the dense matmul rate measured on the same device and dtype (the practical ceiling). Random
weights by default (pretrained=False: the real architecture). The backbone is built with prune=False,
since (a) needs the whole denoiser; the tail pruning would drop never runs in (b) and (c) anyway. It
is pruned at the end, to report the memory users get.

Parameters: the backbone's (pruned denoiser + VAE encoder) against the full pipeline's (denoiser + VAE
with its decoder + every text encoder), both counted on the meta device at the model's real size, so
Flux's 12 B and T5-XXL's 4.8 B are counted without being allocated. A model whose random weights would
not fit in half of this machine's memory is timed on the tiny model of its family instead (said so).
"""
from __future__ import annotations

import argparse
import statistics

import torch

from diffbackbones.backbone.diffusion_backbone import DiffusionBackbone
from diffbackbones.tasks.benchmarking import (DIFT, LABELS, control_stage, controlnet_flops, count_flops,
                                              fits_in_memory, inversion_stage, machine, make_variants, matmul_rate,
                                              param_bytes, pipeline_param_bytes, pipeline_parts_on_meta, relative_error,
                                              run_once, size_str, tiny_of)
from diffbackbones.models.loading import build_denoiser
from diffbackbones.models.zoo import MODELS
from .base import run_command
from .cli import add_model_argument, resolve_model


def parameter_table(model: str, activations) -> None:
    """Parameters held by the backbone against the full pipeline, at the real size, on the meta device."""
    spec = MODELS[model]
    with torch.device('meta'):
        bb = DiffusionBackbone(model, activations, pretrained=False, prompt_cache=False)  # pruned at construction
        denoiser = build_denoiser(spec, 'meta')
    vae, encoders = pipeline_parts_on_meta(spec)
    count = lambda *ms: sum(p.numel() for m in ms for p in m.parameters())
    parts = [('denoiser', count(denoiser), count(bb.denoiser)), ('VAE (encoder + decoder)', count(vae), count(bb.vae))]
    parts += [(f'{name} ({type(enc).__name__})', count(enc), 0) for name, enc in encoders.items()]
    print(f'\nparameters of {model} at full size (meta device), backbone {activations!r} '
          f'(stops after {bb.capture.last_point.name}):')
    print(f'{"part":<44} {"pipeline":>14} {"backbone":>14}')
    for name, full, held in parts:
        print(f'{name:<44} {full / 1e6:>12.1f} M {held / 1e6:>12.1f} M')
    total, held = sum(p[1] for p in parts), sum(p[2] for p in parts)
    print(f'{"total":<44} {total / 1e6:>12.1f} M {held / 1e6:>12.1f} M   backbone / pipeline = {held / total:.3f}x')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser, 'zoo name', default='test_sd_tiny', choices=sorted(MODELS))
    parser.add_argument('--preset', help="preset (default: 'practical', or 'default' for transformers)")
    parser.add_argument('--activations', help='comma-separated layer ids (overrides --preset)')
    parser.add_argument('--dift', action='store_true', help=f'activations {DIFT} (DIFT on sd21; overrides both)')
    parser.add_argument('--pretrained', default='false', help="'false' (random weights), 'true' or a local folder")
    parser.add_argument('--size', type=int, default=None, help="square image side (default: the model's own)")
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--dtype', default='fp32', choices=['fp32', 'fp16', 'bf16'])
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--reps', type=int, default=5, help='timed rounds (median reported)')
    parser.add_argument('--warmup', type=int, default=1, help='untimed rounds before the timed ones')
    parser.add_argument('--compile', action='store_true', help='also time (e): the backbone with compile=True')
    parser.add_argument('--threads', type=int, help='torch intra-op threads (default: torch\'s choice)')
    parser.add_argument('--inversion', action='store_true',
                        help="also time (i): the backbone with noise='ddim-inversion' against sampled noise (c)")
    parser.add_argument('--inversion-steps', type=int, default=100,
                        help='DDIM schedule steps of (i) over the training range (default: 100, the paper code\'s)')
    parser.add_argument('--control', action='store_true',
                        help="also time (k): the backbone with a ControlNet (control='random') against none (c)")
    parser.add_argument('--quantization', choices=['int8', 'float8'],
                        help='also time (q): the backbone with its denoiser quantized (torchao) against (c)')


def run(args: argparse.Namespace) -> None:
    resolve_model(args)
    if args.reps < 1 or args.warmup < 1:
        raise SystemExit('--reps and --warmup must be at least 1')
    if args.threads:
        torch.set_num_threads(args.threads)
    pretrained = {'false': False, 'true': True}.get(args.pretrained.lower(), args.pretrained)
    preset = args.preset or ('practical' if 'practical' in MODELS[args.model].presets else 'default')
    activations = DIFT if args.dift else args.activations.split(',') if args.activations else preset
    device = torch.device(args.device)
    timed = args.model
    if not fits_in_memory(args.model, {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}[args.dtype]):
        timed = tiny_of(args.model)
        print(f"{args.model}: its random weights would not fit in half of this machine's memory; timing {timed} "
              f"(the same denoiser class, its 'default' preset) instead; {args.model}'s parameters are counted "
              'at full size on the meta device.')
    if timed != args.model or MODELS[args.model].denoiser_component == 'transformer':
        parameter_table(args.model, activations)
        activations = activations if timed == args.model else 'default'

    bb = DiffusionBackbone(timed, activations, pretrained=pretrained, dtype=args.dtype, prune=False).to(device)
    size = args.size or bb.spec.image_size
    if size % bb.pixel_multiple:  # (a) and (b) feed the denoiser directly: no padding path
        raise SystemExit(f'--size must be a multiple of {bb.pixel_multiple} for {timed}')
    images = torch.rand(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device) * 2 - 1
    control = None
    if args.control:  # one ControlNet module beside bb, swapped in by (k): same denoiser, no second backbone
        try:
            control = control_stage(bb)
        except ValueError as e:
            raise SystemExit(f'--control: {e}')
    variants = make_variants(bb, images, args.inversion_steps if args.inversion else None, control)
    if args.compile:  # its own modules: compiling bb's would compile (a) and (b) too. Random init is seeded.
        compiled = DiffusionBackbone(args.model, activations, pretrained=pretrained, dtype=args.dtype,
                                     compile=True).to(device)
        variants['e'] = lambda: compiled(images)
    if args.quantization:  # seeded random init (or the same pretrained weights): (c)'s weights, then quantized
        quantized = DiffusionBackbone(timed, activations, pretrained=pretrained, dtype=args.dtype, prune=False,
                                      denoiser=dict(quantization=args.quantization)).to(device)
        variants['q'] = lambda: quantized(images)
    deepest = bb.capture.last_point

    print(f'machine: {machine(device)}')
    print(f'model {timed} (pretrained={pretrained}), {args.dtype}, batch {args.batch} x {size}x{size}, '
          f'levels {[list(level) for level in bb.levels]}')
    print(f'deepest activation: {deepest.name} (#{deepest.order + 1} of {len(bb.points)} in execution order)')

    times = {name: [] for name, fn in variants.items() if fn}
    peaks = dict.fromkeys(times, 0)
    with torch.inference_mode():
        for _ in range(args.warmup):  # also takes the first call's one-time allocations out of the peaks
            outs = {name: run_once(variants[name], device)[0] for name in times}
            # (a) and (c) must compute the same features, or the comparison means nothing.
            acts, feats = outs['a'], outs['c']
            err = max(relative_error(torch.cat([acts[n] for n in level], 1), f) for level, f in zip(bb.levels, feats))
            if 'e' in outs:
                err_e = max(relative_error(e, f) for e, f in zip(outs['e'], feats))
            if 'q' in outs:
                err_q = [relative_error(q, f) for q, f in zip(outs['q'], feats)]
            if 'k' in outs:  # how far the ControlNet's residuals move the features (0 when it is skipped)
                diff_k = max(relative_error(k, f) for k, f in zip(outs['k'], feats))
            del outs, acts, feats
        for round_ in range(args.reps):
            # a, b, c, d then d, c, b, a: a drift of the machine's speed within a round hits all alike
            for name in (list(times) if round_ % 2 == 0 else reversed(times)):
                _, seconds, peak = run_once(variants[name], device)
                times[name].append(seconds)
                peaks[name] = max(peaks[name], peak)
        # (e) runs (c)'s arithmetic; counting through compiled graphs would only recompile them
        flops = {name: count_flops(variants[name]) for name in times if name not in 'eq'}
        for same_arithmetic in {'e', 'q'} & set(times):  # compiled graphs, or dequantizing kernels: (c)'s FLOPs
            flops[same_arithmetic] = flops['c']
        vae_flops = count_flops(lambda: bb.encode(images))  # shared by all three: bounds any denoiser saving
        if control is not None:  # one ControlNet call, counted even when (k) skips it
            control_flops = controlnet_flops(bb, control, images)
        rate, rate_n = matmul_rate(device, bb.dtype)
        pipeline, unpruned = pipeline_param_bytes(bb), param_bytes(bb)
        bb.prune_tail()  # what DiffusionBackbone(prune=True) does at construction
    print(f'check: (a) vs (c) features, max relative L2 error {err:.2e}')
    if 'e' in times:
        print(f'check: (e) vs (c) features, max relative L2 error {err_e:.2e}')
    if 'q' in times:
        print(f'check: (q) vs (c) features, relative L2 error per level {", ".join(f"{e:.2e}" for e in err_q)} '
              f'({args.quantization} weights, {len(quantized.quantized)} linear layers)')
    if 'k' in times:
        print(f'check: (k) vs (c) features, max relative L2 difference {diff_k:.2e} '
              f'({"the ControlNet residuals reach them" if control.consumed else "ControlNet skipped: identical"})')

    median = {name: statistics.median(ts) for name, ts in times.items()}
    mem = 'peak RSS growth' if device.type == 'cpu' else 'peak allocated'
    print(f'matmul rate: {rate / 1e12:.3g} TFLOP/s ({rate_n}x{rate_n} @ {rate_n}x{rate_n}, {args.dtype}, measured here)')
    # Columns are joined by two spaces, whatever a value's width: the table stays machine-readable (split on 2+).
    print('\n' + '  '.join([f'{"variant":<32}', f'{"images/s":>9}', f'{"latency ms":>11}', f'{mem + " MiB":>20}',
                            f'{"TFLOP/image":>12}', f'{"TFLOP/s":>8}', f'{"% matmul":>9}']))
    for name in variants:
        if name not in times:
            print(f'{LABELS[name]:<32}  n/a: attention maps need the unfused attention path, no hook-only floor')
            continue
        achieved = flops[name] / median[name]
        print('  '.join([f'{LABELS[name]:<32}', f'{args.batch / median[name]:>9.3f}', f'{median[name] * 1e3:>11.1f}',
                         f'{peaks[name] / 2 ** 20:>20.1f}', f'{flops[name] / args.batch / 1e12:>12.4g}',
                         f'{achieved / 1e12:>8.3g}', f'{achieved / rate:>9.1%}']))
    print(f'{"of which VAE encode":<32}  {vae_flops / args.batch / 1e12:>{9 + 11 + 20 + 12 + 3 * 2}.4g}')
    def ratio(x: str, y: str) -> str:
        """Median over rounds of the per-round time ratio x/y, with its range: a paired statistic, so a
        machine that is slower in one round than in another cancels out."""
        per_round = sorted(tx / ty for tx, ty in zip(times[x], times[y]))
        return (f'{statistics.median(per_round):.3f}x (median of {len(per_round)} rounds, '
                f'range {per_round[0]:.3f}-{per_round[-1]:.3f})')

    print(f'\nc/a throughput: {ratio("a", "c")}')
    print(f'd/a throughput: {ratio("a", "d")}: repeated images skip the VAE encoder')
    if 'e' in times:
        print(f'e/c throughput: {ratio("c", "e")}: torch.compile against eager')
    if 'q' in times:
        print(f'q/c time: {ratio("q", "c")}: {args.quantization} weight-only (torchao) against {args.dtype}')
    if 'i' in times:
        inversion = inversion_stage(bb, args.inversion_steps)
        print(f'i/c time: {ratio("i", "c")}: DDIM inversion to t={inversion.t} ({args.inversion_steps}-step schedule) '
              f'against sampled noise, {inversion.forwards} extra whole-denoiser forwards; '
              f'FLOP ratio i/c {flops["i"] / flops["c"]:.3f}x')
    if 'k' in times:
        n_control = sum(p.numel() for p in control.parameters())
        call = f'one ControlNet call {control_flops / args.batch / 1e12:.4g} TFLOP/image, {n_control / 1e6:.1f} M parameters'
        if control.consumed:
            print(f'ControlNet consumed: True (an activation lies after the down/mid blocks): it runs whole, before '
                  f'the denoiser; {call}')
            print(f'k/c time: {ratio("k", "c")}: ControlNet run whole + the denoiser with early exit after '
                  f'{deepest.name}, against no ControlNet; FLOP ratio k/c {flops["k"] / flops["c"]:.3f}x')
        else:
            print(f'ControlNet consumed: False (every activation lies in the down blocks / mid block, which never '
                  f'see its residuals): skipped, (k) does (c)\'s arithmetic; {call}, not run')
            print(f'k/c time: {ratio("k", "c")}: ControlNet skipped (not consumed by these activations), the '
                  f'denoiser with early exit after {deepest.name}, against no ControlNet (~1 expected); '
                  f'FLOP ratio k/c {flops["k"] / flops["c"]:.3f}x')
    if 'b' in times:
        print(f'c/b time: {ratio("c", "b")}: the overhead of the backbone over the floor')
        print(f'FLOP bound a/b: {flops["a"] / flops["b"]:.3f}x (the most any early stop can gain here)')
    print(f'loaded parameter memory: backbone {size_str(param_bytes(bb))} (pruned; {size_str(unpruned)} unpruned) '
          f'vs full pipeline {size_str(pipeline)} (denoiser + full VAE + text encoders)')



def main(argv=None) -> None:
    return run_command(__name__, argv)
