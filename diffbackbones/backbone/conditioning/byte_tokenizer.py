"""A vocabulary-free tokenizer for the random-weight test models of families whose text encoder is a language model.

Real checkpoints always use the pipeline's own tokenizer. A test model (``pretrained=False``) ships none, and
the language-model pipelines (Qwen-Image, Z-Image, FLUX.2, ...) need a real ``transformers`` tokenizer: they
call it with padding and truncation, apply a chat template, and read ``pad_token_id``. This one encodes any
text as its UTF-8 bytes (byte-level BPE with no merges: 256 symbols) plus four special tokens, and carries a
ChatML chat template, so every such pipeline runs offline on it. Built in code: nothing is downloaded or shipped.
"""
from __future__ import annotations

from functools import lru_cache

__all__ = ['byte_tokenizer', 'BYTE_VOCAB_SIZE']

SPECIAL_TOKENS = ('<|endoftext|>', '<|im_start|>', '<|im_end|>', '<pad>')
BYTE_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)  # a test model's text encoder needs at least this many embeddings
_CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
           "{{ m['content'] if m['content'] is string else m['content'] | map(attribute='text') | join('') }}"
           "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _byte_symbols() -> dict[int, str]:
    """The printable character byte-level BPE writes each byte as (GPT-2's table: printable bytes stand for
    themselves, the others are shifted past 255)."""
    printable = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1),
                 *range(ord('®'), ord('ÿ') + 1)]
    symbols, shift = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in symbols:
            symbols[b], shift = chr(256 + shift), shift + 1
    return symbols


@lru_cache(maxsize=None)
def _tokenizer_object():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    vocab = {symbol: byte for byte, symbol in _byte_symbols().items()}  # id = the byte's value
    vocab.update({token: 256 + i for i, token in enumerate(SPECIAL_TOKENS)})
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    # a BOS first, as most language-model tokenizers (GLM's, Llama's): an empty prompt is then one token, not none
    tokenizer.post_processor = processors.TemplateProcessing(single='<|endoftext|> $A', pair='<|endoftext|> $A $B',
                                                             special_tokens=[('<|endoftext|>', 256)])
    return tokenizer.to_str()


def byte_tokenizer(model_max_length: int = 512):
    """A fresh ``PreTrainedTokenizerFast`` over UTF-8 bytes: ids 0-255 are bytes, 256 ``<|endoftext|>`` (BOS, put
    first, and EOS), 257/258 ``<|im_start|>``/``<|im_end|>``, 259 ``<pad>``; a ChatML ``chat_template``."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_tokenizer_object()),
                                        bos_token='<|endoftext|>', eos_token='<|endoftext|>', pad_token='<pad>',
                                        model_max_length=model_max_length)
    tokenizer.add_special_tokens({'additional_special_tokens': ['<|im_start|>', '<|im_end|>']})
    tokenizer.chat_template = _CHATML
    return tokenizer
