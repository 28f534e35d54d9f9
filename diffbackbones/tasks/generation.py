"""Capture while a pipeline generates: the activations of the image being generated, at chosen steps.

    with capture_generation(pipe, ['up-level1-repeat1-vit-block0-cross-q'], steps=[0, -1]) as run:
        images = pipe(prompt, num_inference_steps=20).images
    run.levels(-1)          # tuple of (B, C, h, w) CPU tensors, fine to coarse, like the backbone's output
    run.timesteps[-1]       # the timestep that denoiser call ran at

A step is one call of the pipeline's denoiser (``pipe.unet`` or ``pipe.transformer``), counted from 0:
with classifier-free guidance the pipelines batch both halves into one call, so calls and sampling steps
coincide (``steps=[-1]`` is the last one); a pipeline that calls it more than once per step (Flux with
``true_cfg_scale``, SD3 with ``skip_guidance_layers``) gets a warning, and steps still count calls. Tested
on SD, SDXL, PixArt-alpha / Sigma, SD3, Flux and DiT pipelines (Flux's packed tokens are put back on their
grid from ``img_ids``). The capture hooks sit on the denoiser only during the chosen
calls: the capture is armed at the end of the call before (or on entering, for step 0) and disarmed
right after, so every other call runs untouched and the generation is the one the pipeline makes
without it (no early stop: the pipeline needs every call's full output). Attention maps (``*-map``) are
the exception to exactness: during the chosen calls they run explicit attention instead of the fused
kernel, which rounds differently. Leaving the context removes
every hook, also on error. Only the chosen steps are stored, detached, on the CPU.

``generate_labelled`` is one use, DatasetDM / DiffuMask-style synthetic labelled data: a pixel
classifier trained on real labelled images' features (the same model, as a ``DiffusionBackbone`` at the
chosen step's timestep) labels the images a pipeline generates, from the features captured at that step.
"""
from __future__ import annotations

import inspect
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
import torch.nn as nn

from diffbackbones.backbone.denoiser.capture import ActivationCapture
from diffbackbones.models.catalog import activation_points, catalog_index, latent_multiple
from diffbackbones.backbone.presets import ActivationsArg, Preset, resolve_levels
from diffbackbones.models.zoo import MODELS, Levels, ModelSpec, get_model_spec

__all__ = ['capture_generation', 'GenerationCapture', 'generate_labelled', 'LabelledSet']

Keep = Literal['cond', 'uncond', 'both']


def _denoiser_of(pipe: Any) -> nn.Module:
    for part in ('unet', 'transformer'):
        denoiser = getattr(pipe, part, None)
        if isinstance(denoiser, nn.Module):
            return denoiser
    raise TypeError(f'{type(pipe).__name__} has neither a .unet nor a .transformer module: capture_generation takes '
                    'a diffusers pipeline of a supported family (StableDiffusionPipeline, StableDiffusionXLPipeline, '
                    'PixArtAlphaPipeline, StableDiffusion3Pipeline, FluxPipeline, ...).')


def _spec_for(model: str | None, activations: ActivationsArg, layer_ids: set[str]) -> ModelSpec | None:
    """The zoo entry presets are looked up in: ``model``, a ``Preset``'s own model, or a qualified preset
    name's (``'sd15_practical'``); None when ``activations`` names layer ids only."""
    if model is not None:
        return get_model_spec(model)
    if isinstance(activations, Preset):
        return MODELS.get(activations.model) if activations.model else None
    if isinstance(activations, str) and not activations.endswith('.json') and activations not in layer_ids:
        for spec in MODELS.values():
            if any(activations == f'{spec.name}_{p}' for p in spec.presets):
                return spec
        raise ValueError(f'activations={activations!r} is a preset name, and presets belong to a zoo model: pass '
                         f"model= (e.g. capture_generation(pipe, {activations!r}, steps, model='sd15')), a qualified "
                         "name such as 'sd15_practical', or layer ids (diffbackbones.list_activations(pipe.unet)).")
    return None


class GenerationCapture:
    """Records the chosen activations of chosen denoiser calls while a pipeline runs (a context manager).

    Built by ``capture_generation``; after the ``with`` block:

    Attributes:
        levels_ids: The activations as levels of layer ids, fine to coarse (as a backbone's ``levels``).
        feature_info: Per level, ``num_chs`` and ``reduction`` (pixel stride), as a backbone's; after
            the run ``num_chs`` is what was captured (a cross-map has as many channels as the pipeline
            passed text tokens, which only the run tells).
        steps: The chosen steps, resolved (a negative step counted from the last call), sorted.
        activations: Step -> layer id -> (B, C, h, w) CPU tensor of the kept half.
        timesteps: Step -> the timestep the denoiser was called with (a float; the first, if per sample;
            Flux's pipeline passes sigma, t / 1000).
        kept: Step -> which part of the batch was kept: ``'cond'``, ``'uncond'``, ``'both'`` (in the order
            the pipeline batches them: unconditional half first, DiT's conditional first) or ``'all'`` (no
            classifier-free guidance in that call; always for Flux, whose guidance is an embedding).
        calls: Denoiser calls seen (the last generation's).
    """

    def __init__(self, pipe: Any, activations: ActivationsArg, steps: Sequence[int], *, model: str | None = None,
                 keep: Keep = 'cond'):
        if keep not in ('cond', 'uncond', 'both'):
            raise ValueError(f"keep must be 'cond' (the conditional half, default), 'uncond' or 'both'; got {keep!r}")
        if isinstance(steps, int) or not steps or not all(isinstance(s, int) and not isinstance(s, bool)
                                                          for s in steps):
            raise ValueError(f'steps must be a non-empty list of denoiser-call indices (0 = the first call, '
                             f'-1 = the last); got {steps!r}')
        self.pipe, self.keep = pipe, keep
        self.denoiser = denoiser = _denoiser_of(pipe)
        self.requested = sorted(set(steps))
        reference = (latent_multiple(denoiser) * 4,) * 2  # any multiple works: strides are ratios
        tokenizer = getattr(pipe, 'tokenizer', None)
        n_tokens = getattr(tokenizer, 'model_max_length', 77) if tokenizer is not None else 77
        self.points = activation_points(denoiser, reference, min(int(n_tokens), 4096))
        index = catalog_index(self.points)
        vae = getattr(pipe, 'vae', None)
        factor = int(getattr(pipe, 'vae_scale_factor', 8)) if vae is not None else 1  # pixel space: 1
        stride_of = {name: factor * p.stride(reference) for name, p in index.items()}
        if isinstance(activations, str) and activations.endswith('.json'):
            activations = Preset.load(activations)  # its own model names the presets' topology
        spec = _spec_for(model, activations, set(index))
        if spec is None and isinstance(activations, str):
            activations = [activations]  # one layer id
        self.levels_ids: Levels = resolve_levels(spec, activations, self.points, stride_of)
        self.names = [n for level in self.levels_ids for n in level]
        self.feature_info = [dict(num_chs=sum(index[n].channels for n in level), reduction=stride_of[level[0]])
                             for level in self.levels_ids]
        self.steps: list[int] = []
        self.activations: dict[int, dict[str, torch.Tensor]] = {}
        self.timesteps: dict[int, float] = {}
        self.kept: dict[int, str] = {}
        self.calls = 0
        self._chosen: set[int] = set()
        self._negatives: dict[int, int] = {}
        self._capture: ActivationCapture | None = None
        self._handles: list = []
        self._total: int | None = None
        self._encoded_guidance: bool | None = None
        self._encode_prompt: tuple | None = None

    # -- the hooks on the denoiser ----------------------------------------------------------------
    def _arm(self) -> None:
        self._capture = ActivationCapture(self.denoiser, self.names, detach=True, catalog=self.points).__enter__()
        self._hook_root()

    def _hook_root(self) -> None:
        """(Re-)register ``_before`` / ``_after`` on the denoiser, after every hook the capture put there.

        Transformers' captures hook the denoiser itself (a pre-hook reads the token grid); torch runs a
        module's hooks in registration order from a snapshot, so ours must come last: ``_before`` may
        disarm (at call 0) only after the capture's pre-hooks ran, and ``_after`` collects only after its
        forward hooks ran."""
        for handle in self._handles:
            handle.remove()
        self._handles = [self.denoiser.register_forward_pre_hook(self._before, with_kwargs=True),
                         self.denoiser.register_forward_hook(self._after, with_kwargs=True, always_call=True)]

    def _disarm(self) -> dict[str, torch.Tensor]:
        capture, self._capture = self._capture, None
        if capture is None:
            return {}
        capture.remove()
        return capture.activations

    def _resolve_steps(self) -> None:
        """At the first call: the pipeline has set its timesteps, so negative steps resolve and steps
        beyond the last call are refused before any work is wasted."""
        total = getattr(self.pipe, 'num_timesteps', None)  # diffusers pipelines set it before their loop
        if total is None:  # PixArt: not stored, but its scheduler's timesteps are set before the loop
            timesteps = getattr(getattr(self.pipe, 'scheduler', None), 'timesteps', None)
            total = len(timesteps) if timesteps is not None else None
        self._total = total
        if total is None and any(s < 0 for s in self.requested):
            raise ValueError(f'steps {self.requested} count from the end, but {type(self.pipe).__name__} does not say '
                             'how many steps it runs (no num_timesteps): pass non-negative steps.')
        resolved = sorted({s + total if s < 0 else s for s in self.requested})
        if total is not None and (resolved[0] < 0 or resolved[-1] >= total):
            bad = [s for s in self.requested if not -total <= s < total]
            raise ValueError(f'step(s) {bad} never run: this generation calls the denoiser {total} times '
                             f'(num_inference_steps={total}), so steps go 0..{total - 1} (or -{total}..-1 from the '
                             'end). Choose steps in that range or raise num_inference_steps.')
        self._chosen = set(resolved)
        self.steps = resolved
        self._negatives = {s: s + total for s in self.requested if s < 0} if total is not None else {}

    def _before(self, module, args, kwargs) -> None:
        if self.calls == 0:
            self._resolve_steps()
            if 0 not in self._chosen:  # armed on entering only because a negative step might have been 0
                self._disarm()
        if self.calls in self._chosen:
            t = kwargs.get('timestep', args[1] if len(args) > 1 else None)
            self.timesteps[self.calls] = float(torch.as_tensor(t).flatten()[0]) if t is not None else float('nan')

    def _after(self, module, args, kwargs, output) -> None:
        step = self.calls
        captured = self._disarm()
        if step in self._chosen:
            if len(captured) != len(self.names):  # an exception inside the forward: nothing to keep
                return
            self.activations[step], self.kept[step] = self._select(captured, kwargs)
        self.calls += 1
        if self.calls in self._chosen:
            self._arm()

    def _select(self, captured: dict[str, torch.Tensor], call: dict) -> tuple[dict[str, torch.Tensor], str]:
        by_class = _class_guidance(call)
        guided = self._guided() if by_class is None else by_class
        if not guided:
            if self.keep == 'uncond':
                raise ValueError("keep='uncond', but this call ran without classifier-free guidance (guidance_scale "
                                 "<= 1): there is no unconditional half. Use keep='cond' or raise guidance_scale.")
            return {n: v.cpu().clone() for n, v in captured.items()}, 'all'
        kept = {}
        for name, value in captured.items():
            half = value.shape[0] // 2
            first, second = value[:half], value[half:]
            cond, uncond = (first, second) if by_class else (second, first)  # DiT: [conditional; null class]
            part = value if self.keep == 'both' else cond if self.keep == 'cond' else uncond
            kept[name] = part.cpu().clone()  # clone: a slice would hold the whole batch's storage
        return kept, self.keep

    def _guided(self) -> bool:
        """Whether this call batches [unconditional; conditional] (classifier-free guidance).

        SD, SDXL and SD3 pipelines say so with ``do_classifier_free_guidance`` (read now: it depends on
        this generation's ``guidance_scale``). PixArt decides it in a local variable that it passes to its
        ``encode_prompt``, which is watched during the context for it. Otherwise (Flux: guidance is an
        embedding, and its ``true_cfg_scale`` runs a separate unconditional call) the batch is all conditional.
        A class-conditioned call (DiT) is read from its own labels instead (``_class_guidance``).
        """
        said = getattr(self.pipe, 'do_classifier_free_guidance', None)
        if said is not None:
            return bool(said)
        return bool(self._encoded_guidance)

    def _watch_encode_prompt(self) -> None:
        pipe = self.pipe
        original = getattr(pipe, 'encode_prompt', None)
        if original is None or hasattr(type(pipe), 'do_classifier_free_guidance'):
            return
        try:
            signature = inspect.signature(original)
        except (TypeError, ValueError):
            return
        parameter = signature.parameters.get('do_classifier_free_guidance')
        if parameter is None:
            return

        def encode_prompt(*args, **kwargs):
            try:
                bound = signature.bind(*args, **kwargs).arguments
                self._encoded_guidance = bool(bound.get('do_classifier_free_guidance', parameter.default))
            except TypeError:
                self._encoded_guidance = None
            return original(*args, **kwargs)
        # on this instance only, through its __dict__ (DiffusionPipeline.__setattr__ writes its config)
        self._encode_prompt = (pipe, vars(pipe).get('encode_prompt'), 'encode_prompt' in vars(pipe))
        vars(pipe)['encode_prompt'] = encode_prompt

    def _unwatch_encode_prompt(self) -> None:
        if self._encode_prompt is None:
            return
        pipe, before, had = self._encode_prompt
        self._encode_prompt = None
        if had:
            vars(pipe)['encode_prompt'] = before
        else:
            vars(pipe).pop('encode_prompt', None)

    # -- the context ------------------------------------------------------------------------------
    def __enter__(self) -> 'GenerationCapture':
        self.steps, self.activations, self.timesteps, self.kept, self.calls = [], {}, {}, {}, 0
        self._negatives, self._total, self._encoded_guidance = {}, None, None
        try:
            if 0 in self.requested or any(s < 0 for s in self.requested):
                self._arm()
            else:
                self._hook_root()
            self._watch_encode_prompt()
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        """Remove every hook (idempotent); the denoiser and the pipeline are left as found."""
        self._disarm()
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._unwatch_encode_prompt()

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.remove()
        if exc_type is None:
            missing = [s for s in (self.steps or self.requested) if s not in self.activations]
            if missing:
                raise ValueError(f'step(s) {missing} never ran: the denoiser was called {self.calls} time(s) inside '
                                 'the with block. Run the pipeline inside it, with num_inference_steps covering the '
                                 'steps (a step is one denoiser call, counted from 0).')
            for negative, step in self._negatives.items():
                self.activations[negative] = self.activations[step]
                self.timesteps[negative], self.kept[negative] = self.timesteps[step], self.kept[step]
            # the channels actually captured: a cross-map's are the text tokens the pipeline passed
            # (the catalog assumed the tokenizer's length, or 77 without one)
            captured = self.activations[self.steps[0]]
            for info, level in zip(self.feature_info, self.levels_ids):
                info['num_chs'] = sum(int(captured[n].shape[1]) for n in level)
            if self._total is not None and self.calls > self._total:
                warnings.warn(f'{type(self.pipe).__name__} called its denoiser {self.calls} times for {self._total} '
                              'sampling steps (more than one call per step: Flux with true_cfg_scale, SD3 with '
                              'skip_guidance_layers, ...): steps count denoiser calls, and a negative step -k was '
                              f'call {self._total} - k, so check which calls were captured.',
                              stacklevel=2)
        return False

    # -- results ----------------------------------------------------------------------------------
    def levels(self, step: int) -> tuple[torch.Tensor, ...]:
        """The activations of ``step`` as levels: each level's activations concatenated along channels,
        (B, C_i, h_i, w_i) fine to coarse, like ``DiffusionBackbone``'s output (without fusion)."""
        if step not in self.activations:
            raise KeyError(f'step {step} was not captured; captured steps: {self.steps}')
        acts = self.activations[step]
        return tuple(torch.cat([acts[n] for n in level], dim=1) for level in self.levels_ids)

    def __getitem__(self, step: int) -> tuple[torch.Tensor, ...]:
        return self.levels(step)


# DiTPipeline's unconditional label: ImageNet's 1000 classes, then the null class it was trained to drop to
NULL_CLASS = 1000


def _class_guidance(call: dict) -> bool | None:
    """For a class-conditioned denoiser call (``class_labels``, DiT): whether it batches classifier-free
    guidance. DiTPipeline says so nowhere but in the labels: under guidance it calls the denoiser on
    [conditional labels; null class], the conditional half first (the other pipelines put it second).
    None: the call has no class labels (ask the pipeline, ``_guided``)."""
    labels = call.get('class_labels')
    if labels is None:
        return None
    labels = torch.as_tensor(labels).flatten()
    half = labels.shape[0] // 2
    return (labels.shape[0] % 2 == 0 and half > 0 and bool((labels[half:] == NULL_CLASS).all())
            and not bool((labels[:half] == NULL_CLASS).any()))


def capture_generation(pipe: Any, activations: ActivationsArg, steps: Sequence[int], *, model: str | None = None,
                       keep: Keep = 'cond') -> GenerationCapture:
    """Capture activations of the image a diffusers pipeline generates, at chosen steps of its sampling loop.

        with capture_generation(pipe, 'practical', steps=[10, -1], model='sd15') as run:
            images = pipe(prompt, num_inference_steps=20).images
        levels = run[-1]     # (B, C_i, h_i, w_i) per level, fine to coarse

    Args:
        pipe: A diffusers pipeline whose ``unet`` or ``transformer`` is a supported denoiser.
        activations: What ``DiffusionBackbone`` accepts: layer ids (grouped by stride), a list of levels, a
            ``Preset`` or preset file, or a preset name; a bare preset name (``'practical'``) needs ``model``.
        steps: Denoiser calls to capture, counted from 0 (one call per sampling step; negative: from the
            last). Checked at the first call against the pipeline's ``num_timesteps``, and on leaving.
        model: Zoo name whose presets a preset name refers to (``'sd15'``, ``'shapes_sd_tiny'``, ...).
        keep: With classifier-free guidance: ``'cond'`` keeps the conditional half of the batch,
            ``'uncond'`` the unconditional one, ``'both'`` the whole batch (as the pipeline batches it:
            unconditional first; DiT: conditional first).

    Returns:
        A ``GenerationCapture``: enter it, run the pipeline inside, then read ``levels(step)``,
        ``activations``, ``timesteps`` and ``kept``.

    Raises:
        ValueError: Unknown layer ids or preset, bad steps or ``keep``; during the run, a step beyond
            the last call; on leaving, a chosen step that never ran.
        TypeError: A pipeline without a supported denoiser.
    """
    return GenerationCapture(pipe, activations, steps, model=model, keep=keep)


# --- synthetic labelled data ------------------------------------------------------------------------

@dataclass
class LabelledSet:
    """What ``generate_labelled`` made.

    Attributes:
        images: (N, 3, H, W) generated images in [-1, 1].
        masks: (N, H, W) int64 predicted class ids.
        held_out: The classifier on held-out real images: ``accuracy``, ``miou`` (fractions),
            ``majority`` (the accuracy of always answering the most frequent class: the chance to beat).
        settings: The call's settings, with the step's timestep and the levels.
        seconds: Time the run took.
    """

    images: torch.Tensor = field(repr=False)
    masks: torch.Tensor = field(repr=False)
    held_out: dict
    settings: dict
    seconds: float

    def to_dict(self) -> dict:
        classes = [np.bincount(m.flatten().numpy(), minlength=self.settings['n_classes']).tolist() for m in self.masks]
        return dict(settings=self.settings, held_out=self.held_out, seconds=self.seconds, pixels_per_class=classes)

    def save(self, out_dir: str | Path, overwrite: bool = False) -> Path:
        """Write ``images/NNNNN.png``, ``masks/NNNNN.png`` (class ids, mode L), ``pictures/NNNNN.png``
        (image | coloured mask) and ``labelled.json``; an earlier run's folder is refused unless ``overwrite``."""
        from PIL import Image

        from diffbackbones.tasks.label_scarce.evaluate import palette
        from diffbackbones.utils.outputs import refuse_earlier_run
        out = Path(out_dir)
        refuse_earlier_run(out / 'labelled.json', overwrite)
        for sub in ('images', 'masks', 'pictures'):
            (out / sub).mkdir(parents=True, exist_ok=True)
        colours = palette(self.settings['n_classes'])
        for i, (image, mask) in enumerate(zip(self.images, self.masks)):
            rgb = ((image.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()
            ids = mask.numpy().astype(np.uint8)
            Image.fromarray(rgb).save(out / 'images' / f'{i:05d}.png')
            Image.fromarray(ids, mode='L').save(out / 'masks' / f'{i:05d}.png')
            Image.fromarray(np.concatenate([rgb, colours[ids]], axis=1)).save(out / 'pictures' / f'{i:05d}.png')
        (out / 'labelled.json').write_text(json.dumps(self.to_dict(), indent=1, default=str))
        return out


def _shapes(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n real images of the embedded shapes set, (n, 3, S, S) in [-1, 1], and their (n, S, S) labels."""
    from diffbackbones.backbone.diffusion_backbone import pixels_to_input
    from diffbackbones.data.shapes import render_sample
    rng = np.random.default_rng(seed)
    pairs = [render_sample(rng, size) for _ in range(n)]
    return (pixels_to_input(np.stack([p[0] for p in pairs])),
            torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.int64)))


def generate_labelled(*, model: str = 'shapes_sd_tiny', pretrained: bool | str = True,
                      activations: ActivationsArg = 'practical', prompt: str | None = None, images: int = 4,
                      steps: int = 10, step: int = -1, size: int = 128, guidance_scale: float = 1.0,
                      real: int = 16, held_out: int = 8, pixels_per_image: int = 500, classifiers: int = 3,
                      max_epochs: int = 10, batch_size: int = 256, seed: int = 0) -> LabelledSet:
    """Generate images and label them: DatasetDM / DiffuMask-style synthetic segmentation data.

    The pipeline generates ``images`` pictures (DDIM, ``steps`` steps); ``capture_generation`` keeps the
    activations at ``step``. A ``DiffusionBackbone`` of the same model, at that step's timestep and
    prompt, gives the features of ``real`` labelled shapes images, on which an ensemble of DDPM-seg
    pixel classifiers (``diffbackbones.tasks.label_scarce.pixel_classifier``) is trained; it labels every
    pixel of the generated images (and of ``held_out`` further real images, to say how well it labels).

    Args:
        model: Zoo name of a text-to-image model whose weights load as a diffusers pipeline
            (``'shapes_sd_tiny'``: the shipped model trained on the shapes set, offline).
        pretrained: True (the zoo's weights) or a local diffusers folder.
        activations: As ``capture_generation`` (preset names are ``model``'s).
        prompt: The generation prompt (default: the shapes model's training prompt).
        images: Images generated (one batch).
        steps: Sampling steps (``num_inference_steps``).
        step: The step whose activations label the images (-1: the last, the least noisy).
        size: Image side, pixels (real images are drawn at it too).
        guidance_scale: Classifier-free guidance (1: none; the shapes model was trained on one prompt).
        real: Labelled real images the classifiers train on.
        held_out: Real images the classifiers are scored on.
        pixels_per_image: Labelled pixels sampled per training image.
        classifiers: MLPs in the ensemble (majority vote).
        max_epochs: Most epochs per classifier (DDPM-seg's early stop may end it sooner).
        batch_size: Pixels per classifier batch (DDPM-seg: 64; larger is quicker on the CPU).
        seed: Seed of the generation, the real images' draw and the classifiers.
    """
    from diffusers import DDIMScheduler, DDPMScheduler, DiffusionPipeline

    from diffbackbones.backbone.diffusion_backbone import DiffusionBackbone
    from diffbackbones.training.shapes_sd import PROMPT
    from diffbackbones.models.loading import resolve_source
    from diffbackbones.tasks.label_scarce.pixel_classifier import (PixelFeatures, compute_iou, extract_levels, predict,
                                                                   train_ensemble)

    start = time.time()
    for name, value in dict(images=images, steps=steps, size=size, real=real, held_out=held_out,
                            pixels_per_image=pixels_per_image, classifiers=classifiers, max_epochs=max_epochs,
                            batch_size=batch_size).items():
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f'{name} must be a positive integer; got {value!r}')
    if real * pixels_per_image < batch_size:
        raise ValueError(f'real * pixels_per_image ({real * pixels_per_image}) labelled pixels do not fill one '
                         f'classifier batch of {batch_size}: raise them or lower batch_size.')
    spec = get_model_spec(model)
    prompt = PROMPT if prompt is None else prompt
    pipe = DiffusionPipeline.from_pretrained(resolve_source(spec, pretrained), dtype=torch.float32)
    if isinstance(pipe.scheduler, DDPMScheduler):  # ancestral DDPM needs hundreds of steps; DDIM a few
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    with capture_generation(pipe, activations, [step], model=model) as run:
        out = pipe(prompt, num_images_per_prompt=images, num_inference_steps=steps, guidance_scale=guidance_scale,
                   height=size, width=size, output_type='pt', generator=torch.Generator().manual_seed(seed))
    generated = out.images * 2 - 1
    t = round(run.timesteps[step])
    del pipe

    backbone = DiffusionBackbone(model, activations, pretrained=pretrained, t=t, prompt=prompt, image_size=size,
                                 resize_features=False)
    real_images, real_labels = _shapes(real + held_out, size, seed)
    levels = extract_levels(backbone, list(real_images), batch_size=4)
    n_classes = int(real_labels.max()) + 1
    train = PixelFeatures([level[:real] for level in levels], (size, size))
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n in range(real):
        pick = torch.randperm(size * size, generator=g)[:pixels_per_image]
        rows.append(torch.stack([torch.full_like(pick, n), pick // size, pick % size], 1))
    pixels = torch.cat(rows)
    targets = real_labels[pixels[:, 0], pixels[:, 1], pixels[:, 2]]
    models, _ = train_ensemble(train, pixels, targets, n_classes, seeds=[seed * 1000 + m for m in range(classifiers)],
                               max_epochs=max_epochs, batch_size=batch_size)

    test = PixelFeatures([level[real:] for level in levels], (size, size))
    preds = [predict(models, test, n) for n in range(held_out)]
    gts = real_labels[real:]
    iou = compute_iou(preds, list(gts), n_classes)
    majority = float(torch.bincount(gts.flatten(), minlength=n_classes).max()) / gts.numel()
    scores = dict(accuracy=float((torch.stack(preds) == gts).float().mean()), miou=iou['miou'],
                  iou=iou['iou'], majority=majority)

    captured = PixelFeatures(list(run.levels(step)), (size, size))
    masks = torch.stack([predict(models, captured, n) for n in range(len(generated))])
    settings = dict(model=model, pretrained=pretrained, activations=activations, prompt=prompt, images=images,
                    steps=steps, step=step, t=t, size=size, guidance_scale=guidance_scale, real=real,
                    held_out=held_out, pixels_per_image=pixels_per_image, classifiers=classifiers,
                    max_epochs=max_epochs, batch_size=batch_size, seed=seed, levels=[list(level) for level in run.levels_ids],
                    channels=[info['num_chs'] for info in run.feature_info], n_classes=n_classes)
    return LabelledSet(generated, masks, scores, settings, time.time() - start)
