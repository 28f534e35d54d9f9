"""Dtype names as options take them (``dtype='bf16'``), and their check."""
from __future__ import annotations

import torch

__all__ = ['DTYPES', 'as_dtype']

DTYPES = {'fp32': torch.float32, 'float32': torch.float32, 'fp16': torch.float16, 'float16': torch.float16,
          'bf16': torch.bfloat16, 'bfloat16': torch.bfloat16}


def as_dtype(dtype: str | torch.dtype, what: str = 'dtype') -> torch.dtype:
    """``dtype`` as a torch dtype; anything but fp32, fp16 and bf16 raises, naming the accepted names."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f'{what} must be one of {sorted(DTYPES)} or the matching torch dtype; got {dtype!r}')
