"""Text encoders that hold their weights only while they run, so a pipeline with several encodes with one in memory.

HiDream's pipeline calls four encoders (CLIP-L, CLIP-G, T5-XXL, Llama 3.1 8B: 13.6 B parameters) from one
``encode_prompt``, HunyuanImage's two. Each encoder here starts on the meta device (its config, dtype and module tree,
no weights); a forward pre-hook loads its weights just before it runs and a forward hook drops them right after, so
the peak is the largest encoder, not their sum. The pipeline's own code runs unchanged: it reads the encoders'
configs and dtypes, calls them in its order, and gets their outputs.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

__all__ = ['load_on_call', 'RESIDENT_AT_EACH_CALL']

# How many of the pipeline's encoders held weights at the start of each encoder call (the one called included):
# tests read it to check that a multi-encoder pipeline really encodes with one in memory.
RESIDENT_AT_EACH_CALL: list[int] = []


def _holds_weights(module: nn.Module) -> bool:
    return any(not p.is_meta for p in module.parameters())


def _take_tensors(module: nn.Module, loaded: nn.Module) -> None:
    """Give ``module`` (on meta) the parameters and buffers of ``loaded`` (the same architecture, with weights)."""
    module.load_state_dict(loaded.state_dict(), assign=True)  # tied weights stay tied: one tensor, both keys
    for name, buffer in loaded.named_buffers():  # the non-persistent ones too (rotary frequencies)
        owner, _, leaf = name.rpartition('.')
        module.get_submodule(owner)._buffers[leaf] = buffer


def load_on_call(encoders: dict[str, nn.Module], load: Callable[[str], nn.Module],
                 device: torch.device) -> list:
    """Hooks that make each of ``encoders`` (built on meta) load its weights (``load(name)``) on ``device`` when it is
    called, and drop them when it returns. Returns the hook handles (remove them with the pipeline)."""
    handles = []
    for name, encoder in encoders.items():
        def before(module, args, name=name):
            if not _holds_weights(module):
                _take_tensors(module, load(name).to(device))
            RESIDENT_AT_EACH_CALL.append(sum(_holds_weights(e) for e in encoders.values()))

        def after(module, args, output):
            module.to('meta')  # the weights go: the next encoder loads into the memory this one held
        handles += [encoder.register_forward_pre_hook(before), encoder.register_forward_hook(after)]
    return handles
