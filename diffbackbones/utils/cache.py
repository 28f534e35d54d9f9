"""An opt-in cache of VAE latents keyed by image content, in memory or on disk.

The key is a SHA-256 of the exact bytes, shape and dtype of the image the VAE would encode (after
resize and padding), inside a namespace naming the VAE (model, weights source, dtype): equal keys
mean equal inputs to the same encoder, so a hit is never wrong. Repeated passes over the same
images (evaluation, sweeps over layers or timesteps) then skip the VAE encoder.
"""
from __future__ import annotations

import hashlib
import os
import uuid
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

__all__ = ['LatentCache', 'save_atomically']


def save_atomically(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file that a concurrent reader never sees half of: into a temp name of this writer's
    own (two processes writing one key never share it), then renamed over ``path`` (atomic)."""
    tmp = path.with_name(f'{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp')
    save_file(tensors, tmp, metadata=metadata)
    tmp.replace(path)


class LatentCache:
    """Latents by image content.

    Args:
        location: ``'memory'`` or a folder (created if missing; one sub-folder per namespace).
        namespace: Identifies the encoder; latents of different encoders never mix.
    """

    def __init__(self, location: str | Path, namespace: str):
        self.namespace = hashlib.sha256(namespace.encode()).hexdigest()[:16]
        self.folder = None if location == 'memory' else Path(location) / self.namespace
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
        self._memory: dict[str, torch.Tensor] = {}
        self.hits = self.misses = 0

    @staticmethod
    def key(image: torch.Tensor) -> str:
        """Content key of one (3, H, W) image."""
        data = image.detach().contiguous().cpu()
        digest = hashlib.sha256(f'{tuple(data.shape)}|{data.dtype}|'.encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b'')
        return digest.hexdigest()

    def get(self, key: str) -> torch.Tensor | None:
        latent = self._memory.get(key)
        if latent is None and self.folder is not None:
            latent = self._read(self.folder / f'{key}.safetensors')
        if latent is None:
            self.misses += 1
        else:
            self.hits += 1
        return latent

    @staticmethod
    def _read(path: Path) -> torch.Tensor | None:
        """The latent stored at ``path``; None when it is absent or unreadable (then it is recomputed)."""
        if not path.is_file():
            return None
        try:
            return load_file(path)['latent']
        except Exception as e:  # truncated or corrupted (a full disk, a copy cut short): a miss, not a crash
            warnings.warn(f'latent cache: unreadable entry {path} ({type(e).__name__}: {e}); recomputing it',
                          stacklevel=3)
            return None

    def put(self, key: str, latent: torch.Tensor) -> None:
        latent = latent.detach().cpu().contiguous()
        if self.folder is None:
            self._memory[key] = latent
        else:
            save_atomically({'latent': latent}, self.folder / f'{key}.safetensors')

    def __len__(self) -> int:
        return len(self._memory) if self.folder is None else len(list(self.folder.glob('*.safetensors')))
