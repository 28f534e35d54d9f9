"""Time a DiffusionBackbone against the full forward it replaces and against the truncation floor.

    python tools/benchmark.py --model sd15 --preset practical --size 256
    python tools/benchmark.py --model sdxl --size 512 --reps 3
    python tools/benchmark.py --model sd21 --dift            # DIFT-style feature: up_blocks[1] output
    python tools/benchmark.py --model flux_dev --size 256    # too big here: timed on test_flux_tiny,
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
import ctypes
import os
import platform
import statistics
import time
from typing import Callable

import torch
import torch.nn as nn
from diffusers import AutoencoderKL
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from diffbackbones import ActivationCapture, DiffusionBackbone
from diffbackbones.cache import LatentCache
from diffbackbones.loading import build_denoiser
from diffbackbones.text import build_text_encoder
from diffbackbones.zoo import MODELS, load_config

DIFT = ['up-level1-upsampler-out']  # DIFT (Tang et al. 2023) on SD2.1: the output of up_blocks[1]
LABELS = {'a': '(a) full forward + capture', 'b': '(b) floor: truncated, no hooks', 'c': '(c) DiffusionBackbone.forward',
          'd': '(d) (c) + warm latent cache', 'e': '(e) (c) with compile=True'}


class _Cut(Exception):
    """Raised by the floor's hook to end the denoiser forward."""


def _raise(*_) -> None:
    raise _Cut


def make_variants(bb: DiffusionBackbone, images: torch.Tensor) -> dict[str, Callable[[], object] | None]:
    """The measured callables by key ('a', 'b', 'c'); 'b' is None when it has no hook-only definition."""
    capture = ActivationCapture(bb.denoiser, [p.name for p in bb.capture.points], stop_early=False, catalog=bb.points)
    deepest = bb.capture.last_point
    hw = tuple(images.shape[-2:])

    vae_dtype = bb.vae_dtype

    def full() -> dict[str, torch.Tensor]:
        # The VAE as the original runs it: default memory format (bb.encode may pick channels-last).
        latents = bb.vae(images.to(vae_dtype).contiguous())
        kwargs = bb.denoiser_inputs(latents, hw)
        with capture:
            bb.denoiser(**kwargs)
        return capture.activations

    def floor() -> None:
        kwargs = bb.denoiser_inputs(bb.encode(images), hw)
        module = bb.denoiser.get_submodule(deepest.module)
        # An 'input' activation exists before its module runs, so the cut goes before that module.
        handle = (module.register_forward_pre_hook(_raise) if deepest.layout == 'input'
                  else module.register_forward_hook(_raise))
        try:
            bb.denoiser(**kwargs)
            raise RuntimeError(f'the floor forward never reached {deepest.module}')
        except _Cut:
            pass
        finally:
            handle.remove()  # the denoiser is shared with (a) and (c)

    cache = LatentCache('memory', 'benchmark')  # filled by the warm-up round

    def cached() -> tuple[torch.Tensor, ...]:
        bb.stages.vae.latent_cache = cache
        try:
            return bb(images)
        finally:
            bb.stages.vae.latent_cache = None

    # Attention maps need the unfused attention path: there is no hook-only floor for them.
    has_maps = any(p.layout == 'attn-map' for p in bb.capture.points)
    return {'a': full, 'b': None if has_maps else floor, 'c': lambda: bb(images), 'd': cached}


def _rss_kib(field: str) -> int:
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))


def run_once(fn: Callable[[], object], device: torch.device) -> tuple[object, float, int]:
    """Run fn once: its result, wall seconds, and peak memory growth in bytes over the state before it."""
    if device.type == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        # getrusage's max RSS cannot be reset, so each variant's peak would hide behind earlier ones.
        # Instead: give freed heap pages back (else an earlier variant's freed memory hides this one's growth),
        # and reset the kernel's resident-set high-water mark (Linux >= 4.0); both outside the timing.
        ctypes.CDLL('libc.so.6').malloc_trim(0)
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        base = _rss_kib('VmRSS:') * 1024
    start = time.perf_counter()
    out = fn()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if device.type == 'cuda' else _rss_kib('VmHWM:') * 1024
    return out, seconds, peak - base


def count_flops(fn: Callable[[], object]) -> int:
    # The math SDPA path: FlopCounterMode has no formula for the fused CPU attention kernel (counts 0).
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def relative_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    return float((x.float() - reference.float()).norm() / reference.float().norm())


def matmul_rate(device: torch.device, dtype: torch.dtype) -> tuple[float, int]:
    """The measured dense matmul rate (FLOP/s) at ``dtype`` and the square size used.

    The practical ceiling of the hardware for this dtype: each variant's achieved FLOP/s is reported as a
    fraction of it, so a number is comparable across cards and CPUs.
    """
    n = 8192 if device.type == 'cuda' else 1024
    gen = torch.Generator(device).manual_seed(0)
    x, y = (torch.randn(n, n, generator=gen, device=device).to(dtype) for _ in range(2))
    calls, seconds = 0, 0.0
    x @ y  # warm-up: kernel selection, lazy initialisation
    while calls < 3 or seconds < 1.0:  # at least a second of work, so timer resolution does not matter
        _, took, _ = run_once(lambda: x @ y, device)
        calls, seconds = calls + 1, seconds + took
    return 2 * n ** 3 * calls / seconds, n


def param_bytes(*modules: nn.Module, dtype: torch.dtype | None = None) -> int:
    """Bytes of parameters and buffers; floating tensors counted at ``dtype`` when given (meta modules)."""
    return sum(t.numel() * (dtype.itemsize if dtype and t.is_floating_point() else t.element_size())
               for m in modules for t in [*m.parameters(), *m.buffers()])


def pipeline_parts_on_meta(spec) -> tuple[nn.Module, dict[str, nn.Module]]:
    """The parts a backbone does not hold, on the meta device: the full VAE (decoder included; nothing
    in pixel space) and every text encoder by subfolder."""
    with torch.device('meta'):
        vae = nn.Identity() if spec.pixel_space else AutoencoderKL.from_config(load_config(spec, 'vae'))
        return vae, {te.subfolder: build_text_encoder(spec, te) for te in spec.text_encoders}


def pipeline_param_bytes(bb: DiffusionBackbone) -> int:
    """Denoiser + full VAE (decoder included) + text encoders, counted at the dtypes the backbone uses."""
    vae, encoders = pipeline_parts_on_meta(bb.spec)
    return (param_bytes(bb.denoiser) + param_bytes(vae, dtype=bb.vae_dtype)
            + param_bytes(*encoders.values(), dtype=bb.dtype))


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


def fits_in_memory(model: str, dtype: torch.dtype) -> bool:
    """Random weights of the denoiser would take under half of this machine's memory."""
    with torch.device('meta'):
        n = sum(p.numel() for p in build_denoiser(MODELS[model], 'meta').parameters())
    ram = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    return n * dtype.itemsize < ram / 2


def tiny_of(model: str) -> str:
    """The tiny test model of the same denoiser class."""
    architecture = MODELS[model].architecture
    return next(name for name, spec in MODELS.items() if name.startswith('test_') and spec.architecture == architecture)


def size_str(n: int) -> str:
    return f'{n / 2 ** 30:.2f} GiB' if n >= 2 ** 30 else f'{n / 2 ** 20:.1f} MiB'


def machine(device: torch.device) -> str:
    cpu = platform.processor() or '?'
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    gpu = f', {torch.cuda.get_device_name(device)}' if device.type == 'cuda' else ''
    return f'{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, device {device}{gpu}'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='test_sd_tiny', choices=sorted(MODELS))
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
    args = parser.parse_args()
    if args.reps < 1 or args.warmup < 1:
        parser.error('--reps and --warmup must be at least 1')
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
        parser.error(f'--size must be a multiple of {bb.pixel_multiple} for {timed}')
    images = torch.rand(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device) * 2 - 1
    variants = make_variants(bb, images)
    if args.compile:  # its own modules: compiling bb's would compile (a) and (b) too. Random init is seeded.
        compiled = DiffusionBackbone(args.model, activations, pretrained=pretrained, dtype=args.dtype,
                                     compile=True).to(device)
        variants['e'] = lambda: compiled(images)
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
            del outs, acts, feats
        for round_ in range(args.reps):
            # a, b, c, d then d, c, b, a: a drift of the machine's speed within a round hits all alike
            for name in (list(times) if round_ % 2 == 0 else reversed(times)):
                _, seconds, peak = run_once(variants[name], device)
                times[name].append(seconds)
                peaks[name] = max(peaks[name], peak)
        # (e) runs (c)'s arithmetic; counting through compiled graphs would only recompile them
        flops = {name: count_flops(variants[name]) for name in times if name != 'e'}
        if 'e' in times:
            flops['e'] = flops['c']
        vae_flops = count_flops(lambda: bb.encode(images))  # shared by all three: bounds any denoiser saving
        rate, rate_n = matmul_rate(device, bb.dtype)
        pipeline, unpruned = pipeline_param_bytes(bb), param_bytes(bb)
        bb.prune_tail()  # what DiffusionBackbone(prune=True) does at construction
    print(f'check: (a) vs (c) features, max relative L2 error {err:.2e}')
    if 'e' in times:
        print(f'check: (e) vs (c) features, max relative L2 error {err_e:.2e}')

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
    if 'b' in times:
        print(f'c/b time: {ratio("c", "b")}: the overhead of the backbone over the floor')
        print(f'FLOP bound a/b: {flops["a"] / flops["b"]:.3f}x (the most any early stop can gain here)')
    print(f'loaded parameter memory: backbone {size_str(param_bytes(bb))} (pruned; {size_str(unpruned)} unpruned) '
          f'vs full pipeline {size_str(pipeline)} (denoiser + full VAE + text encoders)')


if __name__ == '__main__':
    main()
