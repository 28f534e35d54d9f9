"""timm registry: features_only, out_indices, forward_intermediates, classifier, pretrained_cfg."""
import pytest
import timm
import torch

import diffbackbones  # noqa: F401  (registers the entry points)

from conftest import random_images


def test_entry_points_are_registered():
    names = set(timm.list_models())
    for name in ['sd15_practical', 'sd15_legacy', 'sd21_practical', 'sdxl_practical', 'sdxl_legacy', 'pgv2_practical',
                 'test_sd_tiny_practical', 'test_sdxl_tiny_practical']:
        assert name in names
    cfg = timm.models.get_pretrained_cfg('sd15_practical').to_dict()
    assert cfg['hf_hub_id'] == 'stable-diffusion-v1-5/stable-diffusion-v1-5'
    assert cfg['mean'] == cfg['std'] == (0.5, 0.5, 0.5) and cfg['input_size'] == (3, 512, 512)
    assert timm.models.get_pretrained_cfg('sdxl_practical').to_dict()['input_size'] == (3, 1024, 1024)


def test_features_only_matches_feature_info():
    model = timm.create_model('test_sd_tiny_practical', features_only=True)
    assert model.feature_info.channels() == [32, 64, 128]
    assert model.feature_info.reduction() == [8, 16, 32]
    with torch.no_grad():
        feats = model(random_images(2, 64, 96))
    assert [f.shape[1] for f in feats] == model.feature_info.channels()
    assert [96 // f.shape[-1] for f in feats] == model.feature_info.reduction()


def test_out_indices_prune_the_pyramid_and_the_forward():
    model = timm.create_model('test_sd_tiny_practical', features_only=True, out_indices=(1,))
    assert model.feature_info.channels() == [64] and model.feature_info.reduction() == [16]
    unet = model.model.backbone.denoiser
    ran = []
    handle = unet.up_blocks[3].register_forward_pre_hook(lambda m, a: ran.append(3))
    with torch.no_grad():
        (feat,) = model(random_images(1, 64, 64))
    handle.remove()
    assert feat.shape == (1, 64, 4, 4)
    assert ran == []  # level 2 (stride 8) was pruned, so up_blocks[3] never runs


def test_classifier_trains_only_its_head():
    model = timm.create_model('test_sdxl_tiny_practical', num_classes=5)
    assert model.num_classes == 5 and model.get_classifier().out_features == 5
    model.train()
    logits = model(random_images(2, 64, 64))
    assert logits.shape == (2, 5)
    logits.sum().backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    reached = {n for n, p in model.named_parameters() if p.grad is not None}
    assert trainable == reached == {'head.fc.weight', 'head.fc.bias'}
    model.reset_classifier(3)
    assert model(random_images(1, 64, 64)).shape == (1, 3)
    model.reset_classifier(0)
    assert model(random_images(1, 64, 64)).shape == (1, model.num_features)


def test_forward_intermediates_contract():
    model = timm.create_model('test_sd_tiny_legacy')
    x = random_images(1, 64, 64)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        only = model.forward_intermediates(x, indices=2, intermediates_only=True)
    assert [f.shape[1] for f in inter] == [96, 64, 64]
    assert torch.equal(final, inter[-1])
    assert len(only) == 2 and torch.equal(only[0], inter[1])


def test_in_chans_other_than_three_is_refused():
    with pytest.raises(ValueError, match='in_chans must be 3'):
        timm.create_model('test_sd_tiny_practical', in_chans=1)
