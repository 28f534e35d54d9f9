"""Prompts longer than the text encoder's window: cut with a warning, or encoded whole in windows.

The paper's way (``long_prompt='chunks'``) is checked against an embedding built here from the shipped
model's own CLIP tokenizer and text encoder, exactly as its ``encode_long_prompt.py`` builds it; the
random-weight test models (SDXL, PixArt, SD3 topologies) use the package's ``HashTokenizer``. Most
checks encode prompts only (``ConditioningStage.build``); two backbones are built, for features.
"""
import warnings

import pytest
import torch

from diffbackbones import DiffusionBackbone
from diffbackbones.backbone.conditioning.prompt import ConditioningStage
from diffbackbones.models.loading import resolve_source
from diffbackbones.backbone.conditioning.text_encoders import (RANDOM_INIT_SEED, TEXT_ENCODER_LOADS, HashTokenizer,
                                                               LongPromptWarning, _WARNED, build_text_encoder)
from diffbackbones.models.zoo import MODELS

SHAPES = MODELS['shapes_sd_tiny']
# 197 tokens under the shipped tokenizer: three windows of 77, the last one 43 long.
LONG = 'a synthetic picture of circles, squares and triangles on a plain grey ground; ' * 3


def recorded(build):
    """``build()`` and the LongPromptWarnings it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        result = build()
    return result, [w for w in caught if issubclass(w.category, LongPromptWarning)]


def encoded(model, prompt, mode='truncate', cache=False, pretrained=False):
    """The conditioning a backbone of ``model`` would hold (no denoiser built)."""
    spec = MODELS[model]
    source = resolve_source(spec, True) if pretrained else None
    return ConditioningStage(prompt=prompt, long_prompt=mode, cache=cache).build(spec, source, torch.float32)


@pytest.fixture(scope='module')
def clip():
    """The shipped model's tokenizer and text encoder, loaded directly (not through diffbackbones)."""
    from transformers import CLIPTextModel, CLIPTokenizer
    tok = CLIPTokenizer.from_pretrained(SHAPES.weights_dir, subfolder='tokenizer')
    encoder = CLIPTextModel.from_pretrained(SHAPES.weights_dir, subfolder='text_encoder',
                                            torch_dtype=torch.float32).eval()
    return tok, encoder


@torch.no_grad()
def test_chunks_encode_a_long_prompt_as_the_paper_code_does(clip, tmp_path):
    tok, encoder = clip
    ids = tok(LONG, truncation=False, return_tensors='pt').input_ids
    assert ids.shape[1] == 197  # three windows, the last one shorter
    # encode_long_prompt.py: consecutive slices of model_max_length ids, joined along tokens
    by_hand = torch.cat([encoder(ids[:, i:i + 77])[0] for i in range(0, ids.shape[1], 77)], dim=1)

    backbone = DiffusionBackbone('shapes_sd_tiny', 'practical', pretrained=True,
                                 conditioning=dict(prompt=LONG, long_prompt='chunks', cache=str(tmp_path)))
    assert backbone.conditioning.n_tokens == 197
    torch.testing.assert_close(backbone.conditioning.prompt_embeds, by_hand)
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    chunked = backbone(image)

    truncated, caught = recorded(lambda: encoded('shapes_sd_tiny', LONG, pretrained=True))
    assert truncated.n_tokens == 77 and len(caught) == 1
    backbone.conditioning.embeds_table = truncated.embeds_table  # the same backbone, the prompt cut
    assert all((a - b).abs().max() > 1e-3 for a, b in zip(chunked, backbone(image)))
    backbone.conditioning.embeds_table = by_hand
    for a, b in zip(chunked, backbone(image)):
        torch.testing.assert_close(a, b)


@torch.no_grad()
def test_rewrap_puts_bos_and_eos_around_each_75_tokens(clip):
    tok, encoder = clip
    body = tok(LONG, truncation=False).input_ids[1:-1]
    windows = []
    for i in range(0, len(body), 75):
        piece = [tok.bos_token_id] + body[i:i + 75] + [tok.eos_token_id]
        windows.append(piece + [tok.pad_token_id] * (77 - len(piece)))
    by_hand = torch.cat([encoder(torch.tensor([w]))[0] for w in windows], dim=1)
    rewrapped = encoded('shapes_sd_tiny', LONG, 'rewrap', pretrained=True)
    assert rewrapped.n_tokens == 77 * 3
    torch.testing.assert_close(rewrapped.prompt_embeds, by_hand)
    # its first window is the prompt cut at 77, as the pipelines encode it
    truncated, _ = recorded(lambda: encoded('shapes_sd_tiny', LONG, pretrained=True))
    torch.testing.assert_close(rewrapped.prompt_embeds[:, :77], truncated.prompt_embeds)


def test_a_cut_prompt_warns_once_naming_the_limit_and_the_option(tmp_path):
    prompt = 'once ' + 'word ' * 100  # HashTokenizer: one id a word, 103 with BOS and EOS
    _, first = recorded(lambda: encoded('test_sd_tiny', prompt, cache=str(tmp_path)))
    assert len(first) == 1
    message = str(first[0].message)
    assert 'text_encoder (CLIP) reads at most 77 tokens' in message and '77 of 103' in message
    assert "long_prompt='chunks'" in message and 'encode_long_prompt.py' in message
    assert first[0].filename == __file__  # points at the caller, not into the package
    loads = len(TEXT_ENCODER_LOADS)
    _, second = recorded(lambda: encoded('test_sd_tiny', prompt, cache=str(tmp_path)))
    assert second == [] and len(TEXT_ENCODER_LOADS) == loads  # from the cache, and said once
    _WARNED.clear()  # as a new process: the cache file records the cut, so it still warns
    _, third = recorded(lambda: encoded('test_sd_tiny', prompt, cache=str(tmp_path)))
    assert len(third) == 1 and len(TEXT_ENCODER_LOADS) == loads
    _, chunked = recorded(lambda: encoded('test_sd_tiny', prompt, 'chunks'))
    assert chunked == []  # nothing is cut
    _, short = recorded(lambda: encoded('test_sd_tiny', 'word ' * 75))
    assert short == []  # 77 with BOS and EOS: it fits


@torch.no_grad()
def test_sdxl_chunks_both_clips_to_one_length_and_pools_the_first_window():
    spec, prompt = MODELS['test_sdxl_tiny'], 'sdxl ' + 'word ' * 199  # 202 tokens
    cross_map = 'up-level1-repeat0-vit-block0-cross-map'
    backbone = DiffusionBackbone('test_sdxl_tiny', ((cross_map,), ('up-level1-repeat0-vit-block0-out',)),
                                 pretrained=False, conditioning=dict(prompt=prompt, long_prompt='chunks', cache=False))
    chunked = backbone.conditioning
    # by hand: each CLIP's penultimate states per window of 77 ids, the two joined along channels
    parts = []
    for te in spec.text_encoders:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            encoder = build_text_encoder(spec, te).eval()
        ids = torch.tensor([HashTokenizer(1000).full(prompt)])
        assert ids.shape[1] == 202
        parts.append(torch.cat([encoder(ids[:, i:i + 77], output_hidden_states=True).hidden_states[-2]
                                for i in range(0, 202, 77)], dim=1))
    torch.testing.assert_close(chunked.prompt_embeds, torch.cat(parts, dim=-1))
    assert chunked.n_tokens == 202 and backbone.feature_info[0]['num_chs'] == 202  # one map channel a token
    attention_map, block = backbone(torch.rand(1, 3, 64, 64))
    assert attention_map.shape[1] == 202 and torch.isfinite(block).all()

    truncated, caught = recorded(lambda: encoded('test_sdxl_tiny', prompt))
    assert len(caught) == 1 and 'text_encoder (CLIP)' in str(caught[0].message)
    assert 'text_encoder_2 (CLIP)' in str(caught[0].message)
    torch.testing.assert_close(chunked.pooled_embeds, truncated.pooled_embeds)
    # the pooled embedding is still the prompt cut at 77: said, with no mode offered as the fix
    _, caught = recorded(lambda: encoded('test_sdxl_tiny', prompt + ' pooled', 'chunks'))
    message = str(caught[0].message) if len(caught) == 1 else caught
    assert "the pooled embedding of text_encoder_2 (CLIP) is its first window's, the first 77 of 203" in message
    assert "long_prompt='chunks'" not in message and 'text_encoder (CLIP)' not in message


def test_t5_is_cut_at_its_own_limit_whatever_the_mode():
    conditioning, caught = recorded(lambda: encoded('test_pixart_tiny', 't5 ' + 'word ' * 30, 'chunks'))
    assert conditioning.n_tokens == 16 and len(caught) == 1
    message = str(caught[0].message)
    assert 'text_encoder (T5) reads at most 16 tokens' in message and 'no long-prompt mode lengthens it' in message
    assert "long_prompt='chunks'" not in message


def test_sd3_chunks_its_clips_and_cuts_its_t5():
    conditioning, caught = recorded(lambda: encoded('test_sd3_tiny', 'sd3 ' + 'word ' * 99, 'chunks'))
    assert conditioning.n_tokens == 102 + 16  # [CLIP-L + CLIP-G, 102 tokens chunked; T5, cut at 16]
    assert len(caught) == 1 and 'text_encoder_3 (T5)' in str(caught[0].message)
    assert 'text_encoder (CLIP) reads at most' not in str(caught[0].message)  # its sequence is chunked
    assert 'pooled embedding of text_encoder (CLIP)' in str(caught[0].message)  # SD3 pools both CLIPs' first window
    assert 'pooled embedding of text_encoder_2 (CLIP)' in str(caught[0].message)


def test_several_prompts_are_encoded_to_the_longest_and_short_ones_keep_their_window(tmp_path):
    long, short = 'many ' + 'word ' * 120, 'a short prompt'
    both = encoded('test_sd_tiny', [long, short], 'chunks', cache=str(tmp_path))
    assert both.n_tokens == 123
    alone = encoded('test_sd_tiny', short, 'chunks', cache=str(tmp_path))
    assert alone.n_tokens == 77  # fits: the window, as 'truncate' gives it
    with both.using(short):
        torch.testing.assert_close(both.prompt_embeds[:, :77], alone.prompt_embeds)
    # the cache key holds the mode: the same prompt and cache give the window again under 'truncate'
    cut, _ = recorded(lambda: encoded('test_sd_tiny', long, cache=str(tmp_path)))
    assert cut.n_tokens == 77 and encoded('test_sd_tiny', long, 'chunks', cache=str(tmp_path)).n_tokens == 123


def test_an_unknown_mode_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="long_prompt must be one of.*'chunks'"):
        ConditioningStage(prompt='a photo', long_prompt='chunk')
