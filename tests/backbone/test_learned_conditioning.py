"""Trained conditioning (the VPD line): the cross-attention context as parameters, on every family with
cross-attention; persistent in checkpoints; gradients reach it through a frozen denoiser."""
import pytest
import torch

from diffbackbones import DiffusionBackbone
from diffbackbones.backbone.conditioning.prompt import ConditioningStage, PromptConditioning
from diffbackbones.backbone.conditioning.learned import (LearnedConditioning, LearnedConditioningStage,
                                                         VpdClassConditioning, VpdClassesStage, class_embeddings)
from diffbackbones.backbone.conditioning.text_encoders import HashTokenizer, encode_prompts
from diffbackbones.models.zoo import get_model_spec

from conftest import random_images

TEXT_FAMILIES = ['test_sd_tiny', 'test_sdxl_tiny', 'test_pixart_tiny', 'test_sd3_tiny', 'test_flux_tiny']
ONE_TEMPLATE = ('a photo of a {}.',)  # VPD's 80 in real use; one keeps the tests fast


def build(model='test_sd_tiny', activations=None, **conditioning):
    spec = get_model_spec(model)
    # prune=False: no probe forward at construction (pruning is blind to the conditioning: it probes from the
    # latent, and keeps the same modules with a learned context as with a prompt)
    return DiffusionBackbone(model, activations or next(iter(spec.presets)), pretrained=False,
                             conditioning=conditioning, denoiser=dict(prune=False))


def gradients_through_frozen_denoiser(backbone, images):
    """The backbone's own stages with the graph kept (what ``extract`` does when something upstream trains):
    encode, noise, family inputs from the conditioning, capture; the sum of the activations."""
    images, work_hw = backbone.working_input(images)
    kwargs = backbone.denoiser_inputs(backbone.encode(images), work_hw)
    with torch.enable_grad():
        acts = backbone.stages.denoiser(backbone.denoiser, backbone.capture, kwargs, backbone.stages.noise.members,
                                        keep_graph=True)
        sum(a.float().square().mean() for a in acts.values()).backward()


def test_learned_tokens_are_persistent_trainable_and_load_back():
    a = build(type='learned', tokens=4, prompt='a cat')
    assert isinstance(a.conditioning, LearnedConditioning) and isinstance(a.conditioning, PromptConditioning)
    state = a.state_dict()
    assert state['conditioning.tokens'].shape == (4, a.conditioning.embeds_table.shape[-1])
    assert not any(k.startswith('conditioning.') and k != 'conditioning.tokens' for k in state)  # buffers stay out
    assert a.conditioning.tokens.requires_grad and not any(p.requires_grad for p in a.denoiser.parameters())
    initial = a.conditioning.tokens.detach().clone()
    with torch.no_grad():
        a.conditioning.tokens.add_(1.0)  # "trained"
    b = build(type='learned', tokens=4, prompt='a cat')
    assert torch.equal(b.conditioning.tokens, initial)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.conditioning.tokens, b.conditioning.tokens)
    # a lean checkpoint (the frozen parts left out, as LeanCheckpointHook writes) keeps them and loads strictly
    lean = {k: v for k, v in a.state_dict().items() if not k.startswith(a.frozen_prefixes)}
    assert 'conditioning.tokens' in lean and not any(k.startswith('denoiser.') for k in lean)
    with torch.no_grad():
        b.conditioning.tokens.copy_(initial)
    b.load_state_dict(lean)
    assert torch.equal(a.conditioning.tokens, b.conditioning.tokens)


def test_init_prompt_is_the_prompts_first_tokens_and_random_is_seeded_at_its_scale():
    spec, dtype = get_model_spec('test_sd_tiny'), torch.float32
    learned = lambda **kw: LearnedConditioningStage(**kw).build(spec, None, dtype)  # noqa: E731
    encoded = ConditioningStage(prompt='a photo of a cat').build(spec, None, dtype).prompt_embeds
    assert torch.equal(learned(tokens=5, init='prompt', prompt='a photo of a cat').prompt_embeds.detach(),
                       encoded[:, :5])
    empty = ConditioningStage(prompt='').build(spec, None, dtype).prompt_embeds
    r1, r2, r3 = (learned(tokens=6, init='random', seed=s).tokens for s in (1, 1, 2))
    assert torch.equal(r1, r2) and not torch.equal(r1, r3)
    assert 0.5 < (r1.std() / empty.std()).item() < 2  # the scale of a real embedding


@pytest.mark.parametrize('model', TEXT_FAMILIES)
def test_learned_context_runs_on_every_text_family_and_gradients_reach_it(model):
    backbone = build(model, type='learned', tokens=3, init='random', prompt='a cat')
    cond, spec = backbone.conditioning, backbone.spec
    assert cond.n_tokens == 3 and cond.prompt_embeds.shape[:2] == (1, 3) and cond.prompt_embeds.requires_grad
    maps = [p for p in backbone.points if p.kind == 'cross-map']
    assert maps and all(p.channels == 3 for p in maps)  # the catalog follows N
    reference = ConditioningStage(prompt='a cat').build(spec, None, torch.float32)
    if reference.attention_mask is not None:  # T5 families: attend to all N tokens
        assert torch.equal(cond.attention_mask, torch.ones(1, 3, dtype=reference.attention_mask.dtype))
    else:
        assert cond.attention_mask is None
    if reference.pooled_embeds is not None:  # SDXL, SD3, Flux: the prompt's pooled embedding, fixed
        assert torch.equal(cond.pooled_embeds, reference.pooled_embeds) and not cond.pooled_embeds.requires_grad
    images = random_images(2, 64, 64)
    with torch.no_grad():
        features = backbone(images)
    assert [f.shape[1] for f in features] == [i['num_chs'] for i in backbone.feature_info]
    gradients_through_frozen_denoiser(backbone, images)
    assert cond.tokens.grad is not None and cond.tokens.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.denoiser.parameters())


def test_cross_attention_maps_have_one_column_per_learned_token():
    name = 'down-level0-repeat0-vit-block0-cross-map'
    backbone = build(activations=[name], type='learned', tokens=7)
    with torch.no_grad():
        (feature,) = backbone(random_images(1, 64, 64))
    assert feature.shape[1] == 7


def test_learned_pooled_embedding_trains_too_where_a_family_takes_one():
    backbone = build('test_sdxl_tiny', type='learned', tokens=2, prompt='a cat', learn_pooled=True)
    assert 'conditioning.pooled' in backbone.state_dict() and backbone.conditioning.pooled_embeds.requires_grad
    gradients_through_frozen_denoiser(backbone, random_images(1, 64, 64))
    assert backbone.conditioning.pooled.grad.abs().sum() > 0


def test_vpd_class_embeddings_are_the_end_of_text_token_averaged_over_templates():
    spec = get_model_spec('test_sd_tiny')
    templates = ('a photo of a {}.', 'a drawing of the {}.')
    got = class_embeddings(spec, None, ['cat', 'traffic light'], torch.float32, templates)
    tokenizer = HashTokenizer(1000)  # only lengths matter: BOS + words + EOS
    expected = []
    for name in ['cat', 'traffic light']:
        prompts = [t.format(name) for t in templates]
        embs = encode_prompts(spec, None, prompts, torch.float32, cache=False)
        expected.append(torch.stack([e.embeds[0, len(tokenizer.full(p)) - 1] for p, e in zip(prompts, embs)]).mean(0))
    assert got.shape == (2, 32) and torch.allclose(got, torch.stack(expected))
    assert not torch.allclose(got[0], got[1])


@pytest.mark.parametrize('model', ['test_sd_tiny', 'test_pixart_tiny', 'test_flux_tiny'])
def test_vpd_classes_context_is_the_adapted_class_embeddings_and_trains(model):
    names = ['wall', 'floor', 'ceiling']
    spec = get_model_spec(model)
    raw = VpdClassesStage(class_names=names, templates=ONE_TEMPLATE, gamma=0.0).build(spec, None, torch.float32)
    assert isinstance(raw, VpdClassConditioning) and raw.n_tokens == 3
    assert torch.equal(raw.prompt_embeds.detach()[0], raw.class_embeddings)  # gamma 0: exactly the embeddings
    assert torch.equal(raw.class_embeddings, class_embeddings(spec, None, names, torch.float32, ONE_TEMPLATE))
    backbone = build(model, type='vpd-classes', class_names=names, templates=ONE_TEMPLATE)
    assert backbone.conditioning.n_tokens == 3
    adapter = backbone.conditioning.text_adapter
    assert torch.equal(adapter.gamma, torch.full_like(adapter.gamma, 1e-4))
    assert [type(m).__name__ for m in adapter.fc] == ['Linear', 'GELU', 'Linear']
    keys = {k for k in backbone.state_dict() if k.startswith('conditioning.')}
    assert keys == {'conditioning.class_embeddings', 'conditioning.text_adapter.gamma'} | {
        f'conditioning.text_adapter.fc.{i}.{w}' for i in (0, 2) for w in ('weight', 'bias')}
    gradients_through_frozen_denoiser(backbone, random_images(1, 64, 64))
    assert adapter.gamma.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter.fc.parameters())
    assert all(p.grad is None for p in backbone.denoiser.parameters())


def test_vpd_class_embeddings_load_from_a_pth_file(tmp_path):
    table = torch.randn(4, 32)
    torch.save(table, tmp_path / 'classes.pth')
    backbone = build(type='vpd-classes', class_embeddings=str(tmp_path / 'classes.pth'), gamma=0)
    assert torch.equal(backbone.conditioning.prompt_embeds.detach()[0], table)
    assert backbone.conditioning.n_tokens == 4
    spec = get_model_spec('test_sd_tiny')

    def from_file(name):
        return VpdClassesStage(class_embeddings=str(tmp_path / name)).build(spec, None, torch.float32)
    torch.save(torch.randn(4, 31), tmp_path / 'narrow.pth')
    with pytest.raises(ValueError, match=r"\(K, D\) tensor with D=32, .*'test_sd_tiny'; got shape \(4, 31\)"):
        from_file('narrow.pth')
    torch.save(torch.randn(32), tmp_path / 'flat.pth')
    with pytest.raises(ValueError, match=r'got shape \(32,\)'):
        from_file('flat.pth')
    torch.save({'embeddings': table}, tmp_path / 'dict.pth')
    with pytest.raises(ValueError, match='holds a dict'):
        from_file('dict.pth')
    with pytest.raises(ValueError, match='not found'):
        from_file('missing.pth')


def test_mistakes_are_named_with_the_fix():
    # option mistakes: refused by the stage, before any weights load
    with pytest.raises(ValueError, match='tokens must be a positive integer'):
        build(type='learned', tokens=0)
    with pytest.raises(ValueError, match='tokens must be a positive integer'):
        build(type='learned', tokens=2.5)
    with pytest.raises(ValueError, match="init must be 'prompt' or 'random'"):
        build(type='learned', init='zeros')
    with pytest.raises(ValueError, match="class_names=\\[...\\] or class_embeddings='file.pth'"):
        build(type='vpd-classes')
    with pytest.raises(ValueError, match='class_names must be a non-empty list'):
        build(type='vpd-classes', class_names='cat')
    with pytest.raises(ValueError, match="templates must be strings with one '{}'"):
        build(type='vpd-classes', class_names=['cat'], templates=['a photo'])
    with pytest.raises(ValueError, match="unknown conditioning option\\(s\\) 'token' \\(did you mean 'tokens'"):
        build(type='learned', token=4)
    # model mistakes: refused when the conditioning is built for the model
    sd, dtype = get_model_spec('test_sd_tiny'), torch.float32
    with pytest.raises(ValueError, match=r"first tokens=78 of the encoded prompt, which has 77 .*init='random'"):
        LearnedConditioningStage(tokens=78).build(sd, None, dtype)
    with pytest.raises(ValueError, match="learn_pooled=True: 'test_sd_tiny' takes no pooled embedding"):
        LearnedConditioningStage(tokens=2, learn_pooled=True).build(sd, None, dtype)
    with pytest.raises(ValueError, match="'test_dit_tiny' has none .*class_label"):
        LearnedConditioningStage(tokens=4).build(get_model_spec('test_dit_tiny'), None, dtype)
    with pytest.raises(ValueError, match="not supported on 'test_hunyuan_tiny'"):
        VpdClassesStage(class_names=['cat']).build(get_model_spec('test_hunyuan_tiny'), None, dtype)
    with pytest.raises(ValueError, match='one trained context, not one per prompt'):
        with LearnedConditioningStage(tokens=2).build(sd, None, dtype).using('a dog'):
            pass


def test_backbone_forward_keeps_the_graph_for_a_trained_context():
    """The backbone's own forward builds a graph to the learned context through a frozen denoiser, and
    gradients reach no frozen weight."""
    backbone = build(type='learned', tokens=2)
    features = backbone(random_images(1, 64, 64))
    sum(f.sum() for f in features).backward()
    assert backbone.conditioning.tokens.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.denoiser.parameters())
    with torch.no_grad():
        assert not backbone(random_images(1, 64, 64))[0].requires_grad


def test_vpd_class_table_is_encoded_once_and_kept(tmp_path, monkeypatch):
    from diffbackbones.backbone.conditioning import learned as learned_conditioning
    spec, names = get_model_spec('test_sd_tiny'), ['wall', 'floor']
    stage = VpdClassesStage(class_names=names, templates=ONE_TEMPLATE, cache=str(tmp_path))
    first = stage.build(spec, None, torch.float32).class_embeddings
    assert len(list(tmp_path.glob('classes-*.safetensors'))) == 1  # one file for the table, none per prompt

    def no_encoding(*args, **kwargs):
        raise AssertionError('the class table was encoded again')
    monkeypatch.setattr(learned_conditioning, 'class_embeddings', no_encoding)
    assert torch.equal(stage.build(spec, None, torch.float32).class_embeddings, first)
    other = VpdClassesStage(class_names=['wall', 'ceiling'], templates=ONE_TEMPLATE, cache=str(tmp_path))
    with pytest.raises(AssertionError, match='encoded again'):  # other names: another key
        other.build(spec, None, torch.float32)


@pytest.mark.parametrize('model', ['test_pixart_tiny', 'test_flux_tiny'])
def test_class_embed_select_gives_each_image_its_class_on_transformers(model, tmp_path):
    spec = get_model_spec(model)
    stage = VpdClassesStage(class_names=['a'], templates=ONE_TEMPLATE)
    width = stage.build(spec, None, torch.float32).embeds_table.shape[-1]  # the model's context width
    torch.save(torch.randn(3, width, generator=torch.Generator().manual_seed(0)), tmp_path / 'classes.pth')
    backbone = build(model, type='vpd-classes', class_embeddings=str(tmp_path / 'classes.pth'), gamma=0.5,
                     class_embed_select=True)
    images, ids = random_images(2, 64, 64), torch.tensor([2, 0])
    with torch.no_grad():
        batch = backbone((images, ids))
        alone = [backbone((images[i:i + 1], ids[i:i + 1])) for i in range(2)]
        swapped = backbone((images[:1], ids[1:]))
    for i in range(2):
        assert all(torch.allclose(b[i:i + 1], a, atol=1e-5, rtol=1e-4) for b, a in zip(batch, alone[i]))
    assert not torch.allclose(batch[-1][:1], swapped[-1], atol=1e-4)
