"""Two import-time notices of third-party version pairs, dropped by message (every other record passes).

With torchao (the ``quant`` extra) installed, importing any diffusers model imports torchao, which prints:

- torch 2.14's notice to torchao's developers that ``register_constant`` on Enum classes is deprecated
  (logger ``torch.utils._pytree``), twice;
- diffusers 0.42's "Unable to import `torchao` Tensor objects", because torchao 0.18 moved classes diffusers
  lists for loading torchao-serialized checkpoints, which the package never loads (it quantizes after pruning).

Neither says anything a user of the package can act on, and they appeared on every command and import.
"""
from __future__ import annotations

import logging

__all__ = ['drop_third_party_notices']

NOTICES = {
    'torch.utils._pytree': 'is an Enum subclass and is now natively supported by torch.compile',
    'diffusers.quantizers.torchao.torchao_quantizer': 'Unable to import `torchao` Tensor objects',
}


class _DropMessage(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def drop_third_party_notices() -> None:
    """Install the filters (idempotent); call before diffusers is imported."""
    for logger_name, text in NOTICES.items():
        logger = logging.getLogger(logger_name)
        if not any(isinstance(f, _DropMessage) and f.text == text for f in logger.filters):
            logger.addFilter(_DropMessage(text))
