"""What ``diffbackbones benchmark`` measures with: the variants it times (the full forward the backbone
replaces, the truncation floor, the backbone, cached and compiled), timing and peak memory of one call,
FLOP counts, the matmul ceiling, and parameter counts at full size on the meta device. With
``inversion_steps``, also (i): the backbone with DDIM inversion in place of sampled noise; with ``control``,
also (k): the backbone with a ControlNet.

See ``diffbackbones benchmark --help`` for the protocol.
"""
from __future__ import annotations

import ctypes
import os
import platform
import time
from typing import Callable

import torch
import torch.nn as nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from diffbackbones.backbone.diffusion_backbone import DiffusionBackbone
from diffbackbones.utils.cache import LatentCache
from diffbackbones.backbone.denoiser.control import ControlNet, ControlStage
from diffbackbones.backbone.noise.inversion import DdimInversionStage
from diffbackbones.backbone.denoiser.capture import ActivationCapture
from diffbackbones.models.loading import build_denoiser
from diffbackbones.backbone.conditioning.text_encoders import build_text_encoder
from diffbackbones.models.zoo import MODELS, load_config

DIFT = ['up-level1-upsampler-out']  # DIFT (Tang et al. 2023) on SD2.1: the output of up_blocks[1]
LABELS = {'a': '(a) full forward + capture', 'b': '(b) floor: truncated, no hooks', 'c': '(c) DiffusionBackbone.forward',
          'd': '(d) (c) + warm latent cache', 'e': '(e) (c) with compile=True',
          'i': '(i) (c) with DDIM inversion', 'k': '(k) (c) with a ControlNet', 'q': '(q) (c), denoiser quantized'}


class _Cut(Exception):
    """Raised by the floor's hook to end the denoiser forward."""


def _raise(*_) -> None:
    raise _Cut


def make_variants(bb: DiffusionBackbone, images: torch.Tensor, inversion_steps: int | None = None,
                  control: ControlNet | None = None) -> dict[str, Callable[[], object] | None]:
    """The measured callables by key ('a', 'b', 'c', 'd'); 'b' is None when it has no hook-only definition.

    ``inversion_steps``: also 'i', the backbone with ``noise=dict(type='ddim-inversion', t=<its t>,
    inversion_steps=...)`` in place of its sampled noise, on the same weights (``bb`` must be unpruned).
    ``control`` (``control_stage(bb)``): also 'k', the backbone with that ControlNet in place of its (absent)
    control stage, on the same denoiser: the ControlNet whole, then the denoiser to the last activation
    (or (c)'s arithmetic alone when ``control.consumed`` is False)."""
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
    variants = {'a': full, 'b': None if has_maps else floor, 'c': lambda: bb(images), 'd': cached}
    if inversion_steps is not None:
        inversion = inversion_stage(bb, inversion_steps)

        def inverted() -> tuple[torch.Tensor, ...]:
            sampled, bb.stages.noise = bb.stages.noise, inversion
            try:
                return bb(images)
            finally:
                bb.stages.noise = sampled
        variants['i'] = inverted
    if control is not None:
        def controlled() -> tuple[torch.Tensor, ...]:
            plain, bb.control = bb.control, control
            try:
                return bb(images)
            finally:
                bb.control = plain
        variants['k'] = controlled
    return variants


def inversion_stage(bb: DiffusionBackbone, inversion_steps: int) -> DdimInversionStage:
    """The DDIM-inversion noise stage at ``bb``'s timesteps, bound to its model."""
    stage = DdimInversionStage(t=bb.stages.noise.t, inversion_steps=inversion_steps)
    stage.bind(bb.spec)
    return stage


def control_stage(bb: DiffusionBackbone, model: str = 'random') -> ControlNet:
    """The ControlNet stage ``DiffusionBackbone(..., control=model)`` would build (by default the denoiser's
    ControlNet architecture with seeded random weights), bound to ``bb``'s denoiser and capture, on its
    device: one extra module beside ``bb``, not a second backbone."""
    if next(bb.control.parameters(), None) is not None:
        raise ValueError('control_stage needs a backbone built without a ControlNet (control=None)')
    stage = ControlStage(model=model).build(bb.spec, False, bb.dtype, bb.denoiser, bb.capture)
    return stage.to(next(bb.denoiser.parameters()).device)


def controlnet_flops(bb: DiffusionBackbone, control: ControlNet, images: torch.Tensor) -> int:
    """FLOPs of one ControlNet call on ``bb``'s denoiser inputs for ``images`` (counted whether or not
    ``control.consumed`` lets it run in the backbone; its canny preprocessing is OpenCV, not counted)."""
    work, hw = bb.working_input(images)
    kwargs = bb.denoiser_inputs(bb.encode(work), hw)
    consumed, control.consumed = control.consumed, True
    try:
        return count_flops(lambda: control(kwargs, work))
    finally:
        control.consumed = consumed


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
    from diffbackbones.backbone.conditioning.pipeline_prompt import text_encoders_on_meta
    from diffbackbones.models.loading import vae_class
    with torch.device('meta'):
        vae = nn.Identity() if spec.pixel_space else vae_class(spec).from_config(load_config(spec, 'vae'))
        if spec.prompt_pipeline is not None:  # language-model encoders, as the model's pipeline builds them
            return vae, text_encoders_on_meta(spec)
        return vae, {te.subfolder: build_text_encoder(spec, te) for te in spec.text_encoders}


def pipeline_param_bytes(bb: DiffusionBackbone) -> int:
    """Denoiser + full VAE (decoder included) + text encoders, counted at the dtypes the backbone uses."""
    vae, encoders = pipeline_parts_on_meta(bb.spec)
    return (param_bytes(bb.denoiser) + param_bytes(vae, dtype=bb.vae_dtype)
            + param_bytes(*encoders.values(), dtype=bb.dtype))


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
