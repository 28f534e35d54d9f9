"""The model zoo as data: hub ids, embedded architecture configs, conditioning, presets.

Per-model facts live here and nowhere else; the backbone, loader and conditioning code read them.
Architecture configs sit in ``model_configs/<config_dir>/{unet,vae,text_encoder*}.json`` so that
``pretrained=False`` builds the exact architecture offline. Models whose weights ship inside the
package (``weights/<packaged>/``, a diffusers folder) take their configs from that folder instead.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

__all__ = ['TextEncoderSpec', 'ModelSpec', 'MODELS', 'COMBINATIONS', 'get_model_spec', 'load_config', 'layer_stride', 'Levels']

CONFIG_ROOT = Path(__file__).parent / 'model_configs'
WEIGHTS_ROOT = Path(__file__).parent / 'weights'

# A feature pyramid: levels fine to coarse, each a tuple of layer ids concatenated along channels.
Levels = tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class TextEncoderSpec:
    """One CLIP text encoder of a pipeline.

    Attributes:
        subfolder: Pipeline subfolder of the encoder (its tokenizer is ``tokenizer_subfolder``).
        hidden_layer: ``'last'`` (final layer norm applied, SD1/SD2) or ``'penultimate'`` (SDXL).
        pooled: This encoder's projected text embedding is the denoiser's pooled conditioning (SDXL).
    """

    subfolder: str
    tokenizer_subfolder: str
    hidden_layer: Literal['last', 'penultimate'] = 'last'
    pooled: bool = False


@dataclass(frozen=True)
class ModelSpec:
    """Everything diffbackbones needs to know about one pretrained diffusion model."""

    name: str
    description: str
    hub_id: str | None
    config_dir: str
    family: str                   # denoiser topology: presets are only valid within a family
    text_encoders: tuple[TextEncoderSpec, ...]
    image_size: int               # the paper's working size
    license: str
    presets: dict[str, Levels] = field(default_factory=dict)
    time_ids: bool = False        # SDXL-style micro-conditioning (original size, crop, target size)
    beta_start: float = 0.00085   # 'scaled_linear' DDPM schedule shared by SD1.x/2.x/SDXL/PGv2
    beta_end: float = 0.012
    num_train_timesteps: int = 1000
    packaged: str | None = None   # weights shipped in the package: weights/<packaged>/ (pretrained=True)

    @property
    def weights_dir(self) -> Path | None:
        """The diffusers folder shipped in the package, for models that have one."""
        return None if self.packaged is None else WEIGHTS_ROOT / self.packaged

    def config_path(self, component: str) -> Path:
        if self.weights_dir is not None:
            return self.weights_dir / component / 'config.json'
        return CONFIG_ROOT / self.config_dir / f'{component}.json'

    @property
    def available(self) -> bool:
        """Its configs are here (shipped weights can be absent only while tools/train_diffusion.py remakes them)."""
        return self.config_path('unet').is_file()

    def __post_init__(self):
        if self.packaged is None and not self.available:
            raise ValueError(f'model {self.name!r}: no embedded config at {self.config_path("unet")}')
        for preset, levels in self.presets.items():
            if not levels or any(not level for level in levels):
                raise ValueError(f'model {self.name!r}: preset {preset!r} has an empty level')


SD_PRESETS: dict[str, Levels] = {
    # Meng et al. 2024: strides 8 / 16 / 32 at any input size.
    'practical': (('up-level3-repeat0-vit-block0-self-k',),
                  ('up-level2-repeat1-vit-block0-cross-q',),
                  ('up-level1-repeat1-vit-block0-cross-q', 'up-level1-repeat2-res-out')),
    'legacy': (('up-level2-upsampler-out', 'up-level3-repeat2-vit-out'),
               ('up-level1-upsampler-out',),
               ('up-level0-upsampler-out',)),
}
SDXL_PRESETS: dict[str, Levels] = {
    'practical': (('up-level1-repeat0-vit-block0-cross-q', 'up-level1-repeat0-vit-block0-out'),
                  ('up-level0-repeat0-vit-block7-out', 'up-level0-repeat0-vit-block5-out')),
    'legacy': (('up-level1-upsampler-out', 'up-level2-repeat2-res-out'),
               ('up-level0-upsampler-out',)),
}
PGV2_PRESETS: dict[str, Levels] = {
    # From the paper's combined activation set for Playground v2.
    'practical': (('up-level1-upsampler-out',),
                  ('up-level1-repeat0-vit-block0-cross-q',),
                  ('up-level0-repeat0-vit-block5-out',)),
}

_ONE_CLIP = (TextEncoderSpec('text_encoder', 'tokenizer'),)
_TWO_CLIPS = (TextEncoderSpec('text_encoder', 'tokenizer', 'penultimate'),
              TextEncoderSpec('text_encoder_2', 'tokenizer_2', 'penultimate', pooled=True))

MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in [
    ModelSpec('sd15', 'Stable Diffusion 1.5', 'stable-diffusion-v1-5/stable-diffusion-v1-5', 'sd15', 'sd',
              _ONE_CLIP, 512, 'creativeml-openrail-m', SD_PRESETS),
    ModelSpec('sd21', 'Stable Diffusion 2.1 base (512 px, epsilon prediction)', 'stabilityai/stable-diffusion-2-1-base',
              'sd21', 'sd', _ONE_CLIP, 512, 'openrail++', SD_PRESETS),
    ModelSpec('sdxl', 'Stable Diffusion XL base 1.0', 'stabilityai/stable-diffusion-xl-base-1.0', 'sdxl', 'sdxl',
              _TWO_CLIPS, 1024, 'openrail++', SDXL_PRESETS, time_ids=True),
    ModelSpec('pgv2', 'Playground v2 1024px aesthetic (SDXL architecture)', 'playgroundai/playground-v2-1024px-aesthetic',
              'sdxl', 'sdxl', _TWO_CLIPS, 1024, 'playground-v2-community', PGV2_PRESETS, time_ids=True),
    # Trained here (tools/train_diffusion.py) and shipped in the package: the offline model that has
    # learned something. pretrained=True loads weights/shapes_sd_tiny/; False: same architecture, random.
    ModelSpec('shapes_sd_tiny', 'tiny SD1.5-topology latent diffusion model trained on the shapes set', None,
              'shapes_sd_tiny', 'sd', _ONE_CLIP, 128, 'apache-2.0', SD_PRESETS, packaged='shapes_sd_tiny'),
    # Tiny random-weight variants with the fixture topologies, for tests (as timm's test_* models).
    # Their VAE scaling factors (3.0, 4.0) give the random-init encoders unit-variance latents, the
    # role 0.18215 plays for SD's trained VAE; otherwise the noise at t=50 would drown the signal.
    ModelSpec('test_sd_tiny', 'tiny SD1.5-topology model for tests', None, 'test_sd_tiny', 'sd',
              _ONE_CLIP, 64, 'apache-2.0', SD_PRESETS),
    ModelSpec('test_sdxl_tiny', 'tiny SDXL-topology model for tests', None, 'test_sdxl_tiny', 'sdxl',
              _TWO_CLIPS, 64, 'apache-2.0', SDXL_PRESETS, time_ids=True),
]}


# Combined backbones (``CombinedDiffusionBackbone``) as data: name -> description and member arguments.
# Each is also a timm entry of that name.
COMBINATIONS: dict[str, dict] = {
    # The paper's Ours-XL-t (its ade_full.py / city_full.py): SDXL with the practical set plus
    # up-level1-upsampler-out, and Playground v2 with three activations; levels joined by stride.
    'sdxl_pgv2_xlt': dict(
        description="SDXL + Playground v2 combined, the paper's Ours-XL-t activations",
        members=(dict(model='sdxl', activations=(('up-level1-upsampler-out',),) + SDXL_PRESETS['practical']),
                 dict(model='pgv2', activations='practical'))),
    'test_sd_sdxl_tiny': dict(
        description='tiny SD1.5 + tiny SDXL topologies combined, for tests',
        members=(dict(model='test_sd_tiny', activations='practical'),
                 dict(model='test_sdxl_tiny', activations='practical'))),
}


def get_model_spec(name: str) -> ModelSpec:
    """Look a zoo entry up by name; unknown names list the available ones."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f'Unknown diffusion model {name!r}; available: {sorted(MODELS)}. '
                         'To use another checkpoint of a listed architecture, pass its zoo name and '
                         "pretrained='/path/to/diffusers/folder'.") from None


@lru_cache(maxsize=None)
def _read_config(path: Path) -> str:
    return path.read_text()


def load_config(spec: ModelSpec, component: str) -> dict:
    """A fresh copy of one embedded component config (``'unet'``, ``'vae'``, ``'text_encoder'``, ...)."""
    if not spec.available:
        raise FileNotFoundError(f'model {spec.name!r}: its shipped weights are missing from {spec.weights_dir}; '
                                f'reinstall diffbackbones, or remake them with tools/train_diffusion.py '
                                f'(see {spec.weights_dir}/README.md in the source repository).')
    return json.loads(_read_config(spec.config_path(component)))


def layer_stride(spec: ModelSpec, name: str) -> int:
    """Pixel stride of a UNet layer id, read off the embedded configs without building the model.

    For registry metadata (timm's ``pool_size``), where building even a meta-device model per entry
    would slow ``import diffbackbones`` down; the catalog stays the authority (a test checks every id
    of every zoo model against it). Every UNet block but the last halves the resolution on the way
    down and doubles it on the way up; a resampler's output lives at the next level's resolution.
    """
    n_levels = len(load_config(spec, 'unet')['block_out_channels'])
    vae_factor = 2 ** (len(load_config(spec, 'vae')['block_out_channels']) - 1)
    match = re.match(r'(down|up)-level(\d+)', name)
    if match is None:
        latent = 2 ** (n_levels - 1) if name.startswith('mid-') else 1  # unet-in / after-conv-in / out
    else:
        level = int(match.group(2))
        latent = 2 ** level if match.group(1) == 'down' else 2 ** (n_levels - 1 - level)
        if name.endswith('-downsampler-out'):
            latent *= 2
        elif name.endswith('-upsampler-out'):
            latent //= 2
    return vae_factor * latent
