"""The control stage (``diffbackbones/backbone/denoiser/control.py``): a ControlNet's residuals join the denoiser call
exactly as diffusers' ControlNet pipelines pass them, only when a captured activation consumes them."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, DDPMScheduler

from diffbackbones import ActivationCapture, DiffusionBackbone
from diffbackbones.backbone.diffusion_backbone import pixels_to_input
from diffbackbones.backbone.denoiser.control import ControlStage, canny, consumes_residuals, load_controlnet
from diffbackbones.models.loading import WeightsNotFoundError, build_denoiser
from diffbackbones.models.zoo import get_model_spec

UP = ['up-level1-repeat1-vit-block0-cross-q', 'up-level2-repeat0-res-out', 'up-level3-repeat2-vit-out']
DOWN = ['down-level1-repeat0-vit-block0-out', 'down-level2-downsampler-out', 'mid-repeat1-res-out']
T = 50  # the backbones' default timestep


def smooth_pixels(batch: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """(B, H, W, 3) uint8 images with structure (upsampled noise), so Canny finds edges and flat parts."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 256, (batch, 3, h // 8, w // 8), generator=g).float()
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode='bilinear').round().byte().permute(0, 2, 3, 1)


def canny_pil(pixels: torch.Tensor) -> list:
    """The paper code's control images: cv2.Canny(100, 200) of each RGB image, 3 channels, as PIL."""
    import cv2
    import PIL.Image
    return [PIL.Image.fromarray(np.repeat(cv2.Canny(p.numpy(), 100, 200)[..., None], 3, axis=2)) for p in pixels]


def scheduler() -> DDPMScheduler:
    return DDPMScheduler(beta_schedule='scaled_linear', beta_start=0.00085, beta_end=0.012)


@pytest.fixture(scope='module')
def controlnet_folder(tmp_path_factory):
    """A tiny SD ControlNet (from_unet of test_sd_tiny) with random weights, its zero-convs non-zero."""
    controlnet = ControlNetModel.from_unet(build_denoiser(get_model_spec('test_sd_tiny')), load_weights_from_unet=False)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for conv in (*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                     controlnet.controlnet_cond_embedding.conv_out):
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.1)
    folder = tmp_path_factory.mktemp('controlnet')
    controlnet.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope='module')
def plain():
    return DiffusionBackbone('test_sd_tiny', UP + DOWN, pretrained=False, prune=False)  # prune: a faster build


@pytest.fixture(scope='module')
def controlled(controlnet_folder):
    return DiffusionBackbone('test_sd_tiny', UP, pretrained=False, control=dict(model=controlnet_folder, image='canny'))


@torch.no_grad()
def test_features_equal_those_of_the_diffusers_controlnet_pipeline(controlled, controlnet_folder, plain):
    from diffusers import StableDiffusionControlNetPipeline
    pixels = smooth_pixels(2, 64, 64)
    x = pixels_to_input(pixels)
    ours = controlled.activations(x)
    noisy = controlled.denoiser_inputs(controlled.encode(x), (64, 64))['sample']
    pipe = StableDiffusionControlNetPipeline(
        vae=None, text_encoder=None, tokenizer=None, unet=controlled.denoiser,
        controlnet=ControlNetModel.from_pretrained(controlnet_folder), scheduler=scheduler(), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    with ActivationCapture(controlled.denoiser, UP, stop_early=True, catalog=controlled.points) as cap:
        pipe(prompt_embeds=controlled.conditioning.prompt_embeds.expand(2, -1, -1), image=canny_pil(pixels),
             height=64, width=64, latents=noisy, timesteps=[T], guidance_scale=1.0, output_type='latent')
    assert cap.complete
    without = plain.activations(x)
    for name in UP:
        assert torch.equal(ours[name], cap.activations[name]), name
        assert (ours[name] - without[name]).abs().max() > 1e-2, name  # the residuals do change them


@torch.no_grad()
def test_sdxl_controlnet_matches_its_pipeline_and_changes_the_features():
    from diffusers import StableDiffusionXLControlNetPipeline
    bb = DiffusionBackbone('test_sdxl_tiny', 'practical', pretrained=False, control='random', prune=False)
    names = [n for level in bb.levels for n in level]
    pixels = smooth_pixels(2, 64, 64, seed=3)
    x = pixels_to_input(pixels)
    ours = bb.activations(x)
    noisy = bb.denoiser_inputs(bb.encode(x), (64, 64))['sample']
    pipe = StableDiffusionXLControlNetPipeline(
        vae=None, text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None, unet=bb.denoiser,
        controlnet=bb.control.controlnet, scheduler=scheduler(), add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    c = bb.conditioning
    with ActivationCapture(bb.denoiser, names, stop_early=True, catalog=bb.points) as cap:
        pipe(prompt_embeds=c.prompt_embeds.expand(2, -1, -1), pooled_prompt_embeds=c.pooled_embeds.expand(2, -1),
             image=canny_pil(pixels), height=64, width=64, original_size=(64, 64), target_size=(64, 64),
             latents=noisy, timesteps=[T], guidance_scale=1.0, output_type='latent')
    bb.control.consumed = False  # the same backbone without its ControlNet
    without = bb.activations(x)
    for name in names:
        assert torch.equal(ours[name], cap.activations[name]), name
        assert (ours[name] - without[name]).abs().max() > 1e-2, name


def test_residuals_are_consumed_from_the_up_blocks_on(plain):
    first_up = next(p.order for p in plain.points if p.name.startswith('up-'))
    for p in plain.points:
        assert consumes_residuals([p]) == (p.order >= first_up), p.name


@torch.no_grad()
def test_down_and_mid_block_captures_leave_the_controlnet_unrun(controlnet_folder, plain):
    bb = DiffusionBackbone('test_sd_tiny', DOWN, pretrained=False, control=controlnet_folder, prune=False)  # short form
    assert not bb.control.consumed
    bb.control.follow(plain.capture)  # what select_levels would hand it: up-block activations consume
    assert bb.control.consumed
    bb.control.follow(bb.capture)
    assert not bb.control.consumed
    calls = []
    handle = bb.control.controlnet.register_forward_hook(lambda *args: calls.append(1))
    x = pixels_to_input(smooth_pixels(2, 64, 64))
    try:
        ours = bb.activations(x)
    finally:
        handle.remove()
    assert not calls
    without = plain.activations(x)
    assert all(torch.equal(ours[name], without[name]) for name in DOWN)



def test_select_levels_decides_again_whether_the_controlnet_runs(controlnet_folder):
    # a level of an up-block activation (stride 32) and one of down/mid activations (stride 64): keeping only
    # the second leaves no residual consumed
    bb = DiffusionBackbone('test_sd_tiny', [UP[:1], DOWN[1:]], pretrained=False, control=controlnet_folder,
                           prune=False)
    assert bb.control.consumed
    bb.select_levels([1])
    assert not bb.control.consumed

@pytest.fixture(scope='module')
def scale_zero(controlnet_folder):
    return DiffusionBackbone('test_sd_tiny', UP, pretrained=False, control=dict(model=controlnet_folder, scale=0),
                             prune=False)


@torch.no_grad()
def test_scale_zero_equals_no_control(scale_zero, plain):
    assert scale_zero.control.consumed
    x = pixels_to_input(smooth_pixels(2, 64, 64))
    ours, without = scale_zero.activations(x), plain.activations(x)
    assert all(torch.equal(ours[name], without[name]) for name in UP)


def test_controlnet_is_frozen_and_lean_checkpoints_leave_it_out(controlled, scale_zero):
    assert 'control.' in controlled.frozen_prefixes
    assert any(k.startswith('control.controlnet.') for k in controlled.state_dict())
    assert not any(p.requires_grad for p in controlled.control.parameters())
    controlled.train()
    try:
        assert not controlled.control.controlnet.training
    finally:
        controlled.eval()
    lean = {k: v for k, v in controlled.state_dict().items() if not k.startswith(controlled.frozen_prefixes)}
    result = scale_zero.load_state_dict(lean, strict=True)  # the ControlNet is filled from the live model
    assert not result.missing_keys and not result.unexpected_keys


@torch.no_grad()
def test_a_callable_preprocessor_and_noise_members_keep_images_independent(controlnet_folder):
    seen = []

    def brightness(images):  # a half-size control image: the stage resizes it to the input's size
        seen.append(tuple(images.shape))
        return ((images.mean(1, keepdim=True) + 1) / 2).expand(-1, 3, -1, -1)[..., ::2, ::2]

    bb = DiffusionBackbone('test_sd_tiny', UP, pretrained=False, noise=dict(t=[50, 200]), prune=False,
                           control=dict(model=controlnet_folder, image=brightness))
    assert bb.stages.noise.members == 2
    x = pixels_to_input(smooth_pixels(2, 64, 96, seed=5))
    both, second = bb(x), bb(x[1:])
    assert seen == [(2, 3, 64, 128), (1, 3, 64, 128)]  # the working-size batch, padded to the pixel multiple
    # each row of the members * B call gets its own image's control (member-major), whatever the batch
    assert all(torch.allclose(a[1:], b, rtol=1e-4, atol=1e-5) for a, b in zip(both, second))


def test_canny_matches_opencv_on_the_8_bit_image():
    import cv2
    pixels = smooth_pixels(2, 32, 48, seed=7)
    step = torch.zeros(32, 48, 3, dtype=torch.uint8)
    step[:, 24:] = 255
    pixels[1] = step
    edges = canny(pixels_to_input(pixels))
    assert edges.shape == (2, 3, 32, 48) and edges.dtype == torch.float32
    assert set(edges.unique().tolist()) <= {0.0, 1.0} and torch.equal(edges[:, 0], edges[:, 2])
    for k in range(2):
        assert torch.equal(edges[k, 0], torch.from_numpy(cv2.Canny(pixels[k].numpy(), 100, 200)).float() / 255)
    assert edges[1, 0].sum(0).nonzero().flatten().tolist() in ([23], [24])  # the step, and only it


@pytest.mark.filterwarnings('ignore:The `local_dir_use_symlinks` argument is deprecated')  # diffusers' own call
def test_clear_errors(controlnet_folder, controlled):
    with pytest.raises(ValueError, match=r"unknown control image preprocessor 'sobel'.*canny"):
        DiffusionBackbone('test_sd_tiny', pretrained=False, control=dict(model='random', image='sobel'))
    sd3 = get_model_spec('test_sd3_tiny')
    with pytest.raises(ValueError, match=r'UNet denoisers .* only.*SD3ControlNetModel.*inside its blocks'):
        ControlStage(model='random').build(sd3, False, torch.float32, build_denoiser(sd3, device='meta'), None)
    sdxl = get_model_spec('test_sdxl_tiny')
    with pytest.raises(ValueError, match='made for another denoiser'):
        ControlStage(model=controlnet_folder).build(sdxl, False, torch.float32, build_denoiser(sdxl, 'meta'), None)
    missing = r'(?s)HF_HUB_OFFLINE.*huggingface-cli download nobody/no-such-controlnet'
    with pytest.raises(WeightsNotFoundError, match=missing):
        load_controlnet('nobody/no-such-controlnet', controlled.denoiser)
    latents = torch.zeros(1, 4, 8, 8)
    with pytest.raises(ValueError, match='needs the input images'):
        controlled.extract(latents, (64, 64))
    # options that only make sense with a ControlNet are not dropped when the model is missing
    with pytest.raises(ValueError, match=r"control=dict\(image='canny', scale=0.5\) names no ControlNet: add model="):
        DiffusionBackbone('test_sd_tiny', pretrained=False, control=dict(image='canny', scale=0.5))
    with pytest.raises(ValueError, match='UNetMidBlock2DSimpleCrossAttn.*diffusers has no ControlNet'):  # DeepFloyd IF
        DiffusionBackbone('test_if_tiny', ['down-level1-repeat0-res-out'], pretrained=False, control='random')


def test_a_controlnet_backbone_builds_on_the_meta_device():
    with torch.device('meta'):
        bb = DiffusionBackbone('test_sd_tiny', UP, pretrained=False, prompt='on the meta device', control='random')
    assert bb.control.consumed and all(p.is_meta for p in bb.control.parameters())
    assert bb.feature_info == DiffusionBackbone('test_sd_tiny', UP, pretrained=False).feature_info
    # SD2.1 at its real size (no tiny SD2 model): its ControlNet mirrors the linear projections, the
    # per-level head counts and the 1024-wide OpenCLIP context
    with torch.device('meta'):
        sd21 = DiffusionBackbone('sd21', 'practical', pretrained=False, control='random')
    theirs, ours = sd21.control.controlnet.config, sd21.denoiser.config
    assert sd21.control.consumed and theirs.cross_attention_dim == ours.cross_attention_dim == 1024
    assert theirs.use_linear_projection and list(theirs.attention_head_dim) == list(ours.attention_head_dim)


@torch.no_grad()
def test_controlnet_takes_the_backbone_dtype(controlnet_folder):
    bb = DiffusionBackbone('test_sd_tiny', UP, pretrained=False, dtype='bf16', prune=False, control=controlnet_folder)
    assert bb.control.controlnet.dtype == torch.bfloat16
    features = bb(pixels_to_input(smooth_pixels(1, 64, 64)))
    assert all(f.dtype == torch.float32 and f.isfinite().all() for f in features)  # the input's dtype


def test_the_screen_runs_the_controlnet_for_the_activations_that_see_it(controlnet_folder, tmp_path):
    import PIL.Image

    import diffbackbones
    for i, pixels in enumerate(smooth_pixels(2, 64, 64)):
        PIL.Image.fromarray(pixels.numpy()).save(tmp_path / f'{i}.png')
    options = dict(pretrained=False, n_images=2, seeds=2, kinds=['res-out'], progress=False)
    plain = {r['name']: r for r in diffbackbones.screen('test_sd_tiny', tmp_path, **options).rows}
    controlled = {r['name']: r for r in diffbackbones.screen('test_sd_tiny', tmp_path, control=controlnet_folder,
                                                             **options).rows}
    before = [n for n in plain if n.startswith(('down-', 'mid-'))]
    after = [n for n in plain if n.startswith('up-')]
    assert before and after
    assert all(controlled[n]['dni'] == plain[n]['dni'] for n in before)  # residuals join after the mid block
    assert any(abs(controlled[n]['dni'] - plain[n]['dni']) > 1e-6 for n in after)
