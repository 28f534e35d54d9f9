"""Features on disk: safetensors shards written atomically, read back lazily (``FeatureStore``).

A store is a folder::

    settings.json                     the full backbone settings and the image list's source
    shard-r{rank}-{n:05d}.safetensors one tensor per (image, activation): key "{image index}/{activation}";
                                      the shard's own index (image paths, shapes, dtype) in its metadata
    index.json                        every image -> shard, written when a run completes

A shard is written to a temporary name and renamed into place, so a shard file exists only when it is
complete, and its index travels inside it: a run killed at any point leaves complete shards (kept on
``--resume``) and at most a temporary file (ignored, removed on resume). ``index.json`` is a summary of
the shards' own indexes; a folder without it (a run still going, or killed) reads just the same.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file

__all__ = ['FeatureStore', 'write_shard', 'shard_records', 'SETTINGS', 'INDEX']

SETTINGS, INDEX = 'settings.json', 'index.json'


def write_shard(path: Path, records: Sequence[dict], tensors: dict[str, torch.Tensor]) -> None:
    """Write one shard atomically: ``records`` (one per image: index, path, shapes, dtype) as its metadata."""
    tmp = path.with_name(path.name + '.tmp')
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={'images': json.dumps(list(records))})
    os.replace(tmp, path)  # atomic on POSIX: readers see no shard or the whole shard


def shard_records(path: Path) -> list[dict]:
    """The image records a shard holds (reads its header only)."""
    with safe_open(str(path), 'pt') as f:
        return json.loads(f.metadata()['images'])


def complete_shards(root: Path) -> list[Path]:
    return sorted(root.glob('shard-*.safetensors'))


class FeatureStore:
    """Read a feature folder written by ``tools/extract.py``, lazily: nothing is loaded until asked for.

        store = FeatureStore('work_dirs/features')
        store.images                      # image paths, in the order of the image list
        store[0]                          # {activation: tensor} of image 0 (or ``store['path/to/img.png']``)
        store.get(0, 'up-level1-...')     # one activation of one image: reads only that tensor
        store.level(0, 1)                 # level 1 of image 0: its activations concatenated
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not (self.root / SETTINGS).is_file():
            raise FileNotFoundError(f'{self.root} is not a feature store: no {SETTINGS} (write one with tools/extract.py)')
        self.settings = json.loads((self.root / SETTINGS).read_text())
        self._records: dict[int, dict] = {}
        index_file = self.root / INDEX
        if index_file.is_file():
            for record in json.loads(index_file.read_text())['images']:
                self._records[record['index']] = record
        else:  # a run in progress or stopped: the shards' own indexes
            for shard in complete_shards(self.root):
                for record in shard_records(shard):
                    self._records[record['index']] = dict(record, shard=shard.name)
        self._order = sorted(self._records)
        self._by_path = {self._records[i]['path']: i for i in self._order}
        self._handles: dict[str, object] = {}

    @property
    def images(self) -> list[str]:
        return [self._records[i]['path'] for i in self._order]

    @property
    def activations(self) -> list[str]:
        return [name for level in self.settings['levels'] for name in level]

    @property
    def levels(self) -> list[list[str]]:
        return self.settings['levels']

    def __len__(self) -> int:
        return len(self._order)

    def __iter__(self) -> Iterator[str]:
        return iter(self.images)

    def _index(self, image: int | str) -> int:
        if isinstance(image, str):
            if image not in self._by_path:
                raise KeyError(f'{image!r} is not in the store {self.root} ({len(self)} images)')
            return self._by_path[image]
        if image not in self._records:
            raise KeyError(f'image index {image} is not in the store {self.root} (indices {self._order[:3]}...)')
        return image

    def _handle(self, shard: str):
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(self.root / shard), 'pt')
        return self._handles[shard]

    def record(self, image: int | str) -> dict:
        """The index entry of an image: path, shard, shapes, dtype."""
        return self._records[self._index(image)]

    def get(self, image: int | str, activation: str) -> torch.Tensor:
        """One activation of one image, (C, h, w) in the stored dtype; reads only that tensor."""
        record = self.record(image)
        if activation not in record['shapes']:
            raise KeyError(f'{activation!r} is not stored; activations: {list(record["shapes"])}')
        return self._handle(record['shard']).get_tensor(f'{record["index"]}/{activation}')

    def __getitem__(self, image: int | str) -> dict[str, torch.Tensor]:
        return {name: self.get(image, name) for name in self.record(image)['shapes']}

    def level(self, image: int | str, i: int) -> torch.Tensor:
        """Level ``i`` of an image as the backbone returns it: its activations concatenated on channels."""
        names = self.levels[i] if 'aggregate' not in self.record(image)['shapes'] else ['aggregate']
        return torch.cat([self.get(image, name) for name in names])
