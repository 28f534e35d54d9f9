"""ActivationCapture: exact parity with the original implementation, maps, hygiene, errors."""
import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file

from diffbackbones import ActivationCapture, list_activations

from conftest import reference_fixture


def load_fixture(topology):
    root = reference_fixture(topology)
    unet = UNet2DConditionModel.from_pretrained(root / 'unet', torch_dtype=torch.float32).eval()
    inputs = load_file(root / 'inputs.safetensors')
    kwargs = dict(encoder_hidden_states=inputs['encoder_hidden_states'])
    if 'text_embeds' in inputs:
        kwargs['added_cond_kwargs'] = dict(text_embeds=inputs['text_embeds'], time_ids=inputs['time_ids'])
    return unet, inputs['sample'], inputs['timestep'], kwargs, load_file(root / 'activations.safetensors')


@pytest.fixture(scope='module', params=['sd', 'sdxl'])
def fixture_model(request):
    return load_fixture(request.param)


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_every_reference_activation_within_1e4(fixture_model):
    unet, sample, t, kwargs, reference = fixture_model
    names = [n for n in reference if not n.endswith('noise-pred')]
    with torch.no_grad(), ActivationCapture(unet, names) as cap:
        pred = unet(sample, t, **kwargs).sample
    assert set(cap.activations) == set(names)
    errors = {n: rel_err(cap.activations[n], reference[n]) for n in names}
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-4, (worst, errors[worst])
    assert rel_err(pred, reference['unet-noise-pred']) < 1e-4


def test_maps_are_probabilities_and_leave_other_activations_unchanged(fixture_model):
    unet, sample, t, kwargs, reference = fixture_model
    maps = [a for a in list_activations(unet, (16, 16), n_text_tokens=8) if a.kind.endswith('map')]
    q_name = maps[0].name.replace('self-map', 'self-q')
    processors_before = dict(unet.attn_processors)
    with torch.no_grad(), ActivationCapture(unet, [m.name for m in maps] + [q_name, 'unet-out']) as cap:
        unet(sample, t, **kwargs)
    for m in maps:
        value = cap.activations[m.name]
        assert value.shape == (2, m.channels, *m.size)
        torch.testing.assert_close(value.sum(1), torch.ones(2, *m.size), rtol=0, atol=1e-5)
    # the explicit-attention path computes the same network output as the fused one
    assert rel_err(cap.activations['unet-out'], reference['unet-out']) < 1e-4
    assert rel_err(cap.activations[q_name], reference[q_name]) < 1e-4
    # and the model is left as found: processors restored, no hooks
    assert dict(unet.attn_processors) == processors_before
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in unet.modules())


def test_self_map_matches_explicit_softmax():
    unet, sample, t, kwargs, _ = load_fixture('sd')
    name = 'up-level1-repeat0-vit-block0'
    with torch.no_grad(), ActivationCapture(unet, [f'{name}-self-q', f'{name}-self-k', f'{name}-self-map']) as cap:
        unet(sample, t, **kwargs)
    q, k = cap.activations[f'{name}-self-q'], cap.activations[f'{name}-self-k']
    attn = unet.up_blocks[1].attentions[0].transformer_blocks[0].attn1
    b, c, h, w = q.shape
    qh = q.flatten(2).transpose(1, 2).reshape(b, h * w, attn.heads, -1).transpose(1, 2)
    kh = k.flatten(2).transpose(1, 2).reshape(b, h * w, attn.heads, -1).transpose(1, 2)
    probs = (qh @ kh.transpose(-1, -2) * attn.scale).softmax(-1).mean(1)  # (B, Nq, Nk)
    expected = probs.transpose(1, 2).reshape(b, h * w, h, w)
    torch.testing.assert_close(cap.activations[f'{name}-self-map'], expected, rtol=1e-4, atol=1e-6)


def test_tokens_use_the_real_grid_on_non_square_latents():
    """vit-out = proj_out(last block-out) + the transformer's input: fails if tokens are mis-gridded."""
    unet, _, t, kwargs, _ = load_fixture('sdxl')  # linear projection: proj_out acts per pixel
    sample = torch.randn(2, 4, 16, 24)
    prefix = 'down-level1-repeat0'
    with torch.no_grad(), ActivationCapture(unet, [f'{prefix}-res-out', f'{prefix}-vit-block1-out',
                                                   f'{prefix}-vit-out']) as cap:
        unet(sample, t, **kwargs)
    proj_out = unet.down_blocks[1].attentions[0].proj_out
    tokens = cap.activations[f'{prefix}-vit-block1-out']
    assert tokens.shape == (2, 32, 8, 12)
    expected = F.linear(tokens.permute(0, 2, 3, 1), proj_out.weight, proj_out.bias).permute(0, 3, 1, 2)
    torch.testing.assert_close(cap.activations[f'{prefix}-vit-out'], expected + cap.activations[f'{prefix}-res-out'],
                               rtol=1e-4, atol=1e-5)


def test_stop_early_skips_the_rest_of_the_forward():
    unet, sample, t, kwargs, reference = load_fixture('sd')
    ran = []
    handles = [unet.up_blocks[i].register_forward_pre_hook(lambda m, a, i=i: ran.append(i)) for i in range(4)]
    handles.append(unet.conv_out.register_forward_pre_hook(lambda m, a: ran.append('conv_out')))
    name = 'up-level1-repeat0-vit-block0-self-k'
    with torch.no_grad(), ActivationCapture(unet, [name], stop_early=True) as cap:
        unet(sample, t, **kwargs)
    for h in handles:
        h.remove()
    assert ran == [0, 1]  # up_blocks 2, 3 and conv_out never ran
    assert rel_err(cap.activations[name], reference[name]) < 1e-4


def test_unknown_layer_id_lists_close_matches():
    unet, *_ = load_fixture('sd')
    with pytest.raises(ValueError, match=r"up-level1-repeat0-vit-block0-cross-q") as info:
        ActivationCapture(unet, ['up-level1-repeat0-vit-block0-cross-qq'])
    assert 'closest valid ids' in str(info.value)
    with pytest.raises(ValueError, match='no similar id'):
        ActivationCapture(unet, ['xyz'])
