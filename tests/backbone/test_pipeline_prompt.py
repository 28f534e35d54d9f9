"""Conditioning made by a model's own pipeline (PipelinePrompt): the language-model families' prompts."""
from __future__ import annotations

import pytest
import torch

from diffbackbones import DiffusionBackbone
from diffbackbones.backbone.conditioning.byte_tokenizer import BYTE_VOCAB_SIZE, byte_tokenizer
from diffbackbones.backbone.conditioning.text_encoders import TEXT_ENCODER_LOADS
from diffbackbones.models.zoo import MODELS

PIPELINE_TINY = sorted(n for n, s in MODELS.items() if n.startswith('test_') and s.prompt_pipeline is not None)


def test_the_byte_tokenizer_spells_any_text_and_holds_a_chat_template():
    tok = byte_tokenizer()
    assert len(tok) == BYTE_VOCAB_SIZE and tok('é').input_ids == [256, *'é'.encode()]  # BOS, then the bytes
    assert tok('').input_ids == [256]  # an empty prompt is a token: GLM (CogView4) cannot encode none
    text = tok.apply_chat_template([{'role': 'user', 'content': 'a cat'}], tokenize=False, add_generation_prompt=True)
    assert text == '<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n'
    assert tok.pad_token_id == 259 and tok.eos_token_id == 256


@pytest.mark.parametrize('model', PIPELINE_TINY)
def test_each_tiny_entrys_prompt_reaches_its_conditioning(model):
    # a max_sequence_length that the pipeline's template fills would make every prompt the same conditioning
    backbone = DiffusionBackbone(model, 'default', pretrained=False, prompt_cache=False,
                                 prompt=['a red cube on a wooden table', 'two blue spheres'])
    with backbone.conditioning.using('a red cube on a wooden table'):
        red = backbone.conditioning.prompt_embeds.clone()
    with backbone.conditioning.using('two blue spheres'):
        blue = backbone.conditioning.prompt_embeds
    assert red.shape == blue.shape and not torch.allclose(red, blue)


def test_prompts_of_different_lengths_are_padded_and_masked_out():
    # Z-Image's pipeline keeps each prompt's own tokens: a table of two is padded, the padding masked out, and the
    # family passes the unpadded tokens on (so a prompt's features do not depend on the others it was built with)
    both = DiffusionBackbone('test_zimage_tiny', 'default', pretrained=False, prompt_cache=False,
                             prompt=['a red cube', 'a much longer prompt about two blue spheres on grass'])
    alone = DiffusionBackbone('test_zimage_tiny', 'default', pretrained=False, prompt_cache=False, prompt='a red cube')
    mask = both.conditioning.mask_table
    assert mask is not None and mask[0].sum() < mask[1].sum() == mask.shape[1]
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(both(images), alone(images)))


def test_embeddings_encoded_elsewhere_replace_the_text_encoders(tmp_path):
    encoded = DiffusionBackbone('test_qwen_image_tiny', 'default', pretrained=False, prompt='a red cube',
                                prompt_cache=False)
    given = dict(embeds=encoded.conditioning.prompt_embeds)  # (one prompt: Qwen-Image's pipeline gives no mask)
    assert encoded.conditioning.attention_mask is None
    before = len(TEXT_ENCODER_LOADS)
    backbone = DiffusionBackbone('test_qwen_image_tiny', 'default', pretrained=False,
                                 conditioning=dict(prompt='a red cube', prompt_embeds=given))
    assert len(TEXT_ENCODER_LOADS) == before  # nothing loaded
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert all(torch.equal(a, b) for a, b in zip(backbone(images), encoded(images)))
    # a file of the prompt cache's format works too
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in given.items()}, tmp_path / 'embeds.safetensors')
    from_file = DiffusionBackbone('test_qwen_image_tiny', 'default', pretrained=False,
                                  conditioning=dict(prompt='a red cube', prompt_embeds=tmp_path / 'embeds.safetensors'))
    assert torch.equal(from_file.conditioning.prompt_embeds, encoded.conditioning.prompt_embeds)


def test_wrong_embeddings_and_options_are_refused_with_what_was_expected():
    wide = torch.zeros(1, 8, 33)
    with pytest.raises(ValueError, match='33 wide; .* takes 32-wide'):
        DiffusionBackbone('test_qwen_image_tiny', 'default', pretrained=False, conditioning=dict(prompt_embeds=wide))
    with pytest.raises(ValueError, match='2 rows for 1 prompt'):
        DiffusionBackbone('test_qwen_image_tiny', 'default', pretrained=False,
                          conditioning=dict(prompt_embeds=torch.zeros(2, 8, 32)))
    with pytest.raises(ValueError, match='pooled'):  # Flux takes a pooled embedding too
        DiffusionBackbone('test_flux_tiny', 'default', pretrained=False,
                          conditioning=dict(prompt_embeds=torch.zeros(1, 16, 32)))
    with pytest.raises(ValueError, match="long_prompt='chunks' lengthens CLIP encoders"):
        DiffusionBackbone('test_zimage_tiny', 'default', pretrained=False,
                          conditioning=dict(cache=False, long_prompt='chunks'))
    with pytest.raises(ValueError, match='encoder_dtype must be one of'):
        DiffusionBackbone('test_zimage_tiny', 'default', pretrained=False, conditioning=dict(encoder_dtype='int8'))
    with pytest.raises(RuntimeError, match='[Ii]nvalid device|device string'):  # torch's own word on a bad name
        DiffusionBackbone('test_zimage_tiny', 'default', pretrained=False,
                          conditioning=dict(cache=False, encoder_device='gpu0'))


def test_the_encoded_prompt_is_cached_and_a_second_build_loads_no_encoder(tmp_path):
    kwargs = dict(pretrained=False, prompt='a prompt only this test uses', prompt_cache=str(tmp_path))
    before = len(TEXT_ENCODER_LOADS)
    first = DiffusionBackbone('test_wan_tiny', 'default', **kwargs)
    assert [sub for _, sub in TEXT_ENCODER_LOADS[before:]] == ['text_encoder']
    before = len(TEXT_ENCODER_LOADS)
    second = DiffusionBackbone('test_wan_tiny', 'default', **kwargs)
    assert len(TEXT_ENCODER_LOADS) == before and len(list(tmp_path.glob('*.safetensors'))) == 1
    assert torch.equal(first.conditioning.prompt_embeds, second.conditioning.prompt_embeds)


def test_a_real_size_language_model_entry_builds_on_meta_without_its_encoder():
    # FLUX.2's Mistral (24 B) is never built: the conditioning is a tensor of the width the denoiser takes
    before = len(TEXT_ENCODER_LOADS)
    with torch.device('meta'):
        backbone = DiffusionBackbone('flux2_dev', 'default', pretrained=False, prompt_cache=False)
    assert len(TEXT_ENCODER_LOADS) == before
    assert backbone.conditioning.prompt_embeds.shape == (1, 512, 15360)


def test_a_pipeline_with_several_encoders_holds_one_at_a_time():
    # HiDream's encode_prompt calls four encoders: each loads its weights when called and drops them after, so one is
    # in memory at a time (its embeddings equal the pipeline's own eager call: test_family_hidream.py)
    from diffbackbones.backbone.conditioning.one_at_a_time import RESIDENT_AT_EACH_CALL
    RESIDENT_AT_EACH_CALL.clear()
    before = len(TEXT_ENCODER_LOADS)
    DiffusionBackbone('test_hidream_tiny', 'default', pretrained=False, prompt='a red cube', prompt_cache=False)
    assert RESIDENT_AT_EACH_CALL == [1, 1, 1, 1]
    assert [c for _, c in TEXT_ENCODER_LOADS[before:]] == [f'text_encoder{s}' for s in ('', '_2', '_3', '_4')]
    # HunyuanImage's ByT5 runs on quoted text only: for a plain prompt it is never loaded
    before = len(TEXT_ENCODER_LOADS)
    DiffusionBackbone('test_hunyuan_image_tiny', 'default', pretrained=False, prompt='a red cube', prompt_cache=False)
    assert [c for _, c in TEXT_ENCODER_LOADS[before:]] == ['text_encoder']
