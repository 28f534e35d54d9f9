"""Keypoint pairs as published: SPair-71k's folders, or the list-of-pairs JSON of the paper's code.

SPair-71k (Min et al. 2019)::

    root/JPEGImages/<category>/<name>.jpg
    root/PairAnnotation/{trn,val,test}/<id>-<src>-<trg>:<category>.json   src_imname, trg_imname, category,
                                                    src_kps, trg_kps (x, y), src_bndbox, trg_bndbox
                                                    (x0, y0, x1, y1), src_imsize, trg_imsize (w, h, 3)

The paper's code (after diffusion_hyperfeatures) reads one JSON list per split instead, stored next to the
images: ``[{"source_path": "dog/2008_007494.jpg", "target_path": ..., "source_points": [[x, y], ...],
"target_points": ..., "category": "dog", "source_bounding_box": [x0, y0, x1, y1], "target_bounding_box":
...}, ...]`` (``spair_71k_train.json``, ``spair_71k_val-360.json``, ``spair_71k_test-6.json``).

Every image is checked against its annotation: the JPEG exists, its size is the recorded one, and every
keypoint lies inside it; an error names the file and what was expected.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ['Pair', 'load_spair', 'load_pair_list', 'find_pairs', 'SPLIT_NAMES']

SPLIT_NAMES = {'trn': 'trn', 'train': 'trn', 'val': 'val', 'test': 'test'}


@dataclass(frozen=True)
class Pair:
    """One annotated image pair. Points are (K, 2) pixel (x, y); boxes (x0, y0, x1, y1); sizes (w, h)."""
    name: str
    category: str
    source: Path
    target: Path
    source_points: np.ndarray
    target_points: np.ndarray
    source_bbox: tuple[float, float, float, float]
    target_bbox: tuple[float, float, float, float]
    source_size: tuple[int, int]
    target_size: tuple[int, int]


@lru_cache(maxsize=None)
def _image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:  # reads the header only
        return image.size


def _points(value, where: str, field: str) -> np.ndarray:
    points = np.asarray(value, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
        raise ValueError(f'{where}: {field} must be a non-empty list of [x, y] keypoints; got shape {points.shape}')
    return points


def _check_image(path: Path, recorded: tuple[int, int] | None, points: np.ndarray, where: str) -> tuple[int, int]:
    if not path.is_file():
        raise FileNotFoundError(f'{where}: image {path} does not exist')
    size = _image_size(path)
    if recorded is not None and tuple(recorded) != size:
        raise ValueError(f'{where}: {path} is {size[0]} x {size[1]} (w x h), but the annotation records '
                         f'{recorded[0]} x {recorded[1]}; the keypoints would be misplaced. Is it the right image?')
    outside = (points < 0).any(1) | (points[:, 0] > size[0] - 1) | (points[:, 1] > size[1] - 1)
    if outside.any():
        raise ValueError(f'{where}: keypoints {points[outside].tolist()} lie outside {path} '
                         f'({size[0]} x {size[1]}); expected 0 <= x < width, 0 <= y < height.')
    return size


def _pair(name, category, source, target, src_pts, trg_pts, src_box, trg_box, where, src_size=None, trg_size=None):
    if len(src_pts) != len(trg_pts):
        raise ValueError(f'{where}: {len(src_pts)} source keypoints but {len(trg_pts)} target keypoints; '
                         'they must pair up one to one')
    return Pair(name, category, source, target, src_pts, trg_pts, tuple(map(float, src_box)), tuple(map(float, trg_box)),
                _check_image(source, src_size, src_pts, where), _check_image(target, trg_size, trg_pts, where))


def load_spair(root: str | Path, split: str) -> list[Pair]:
    """The pairs of one SPair-71k split (``trn``/``train``, ``val``, ``test``), in file-name order."""
    root = Path(root)
    if split not in SPLIT_NAMES:
        raise ValueError(f'unknown SPair-71k split {split!r}; expected one of {sorted(SPLIT_NAMES)}')
    folder = root / 'PairAnnotation' / SPLIT_NAMES[split]
    files = sorted(folder.glob('*.json'))
    if not files:
        raise FileNotFoundError(f'no pair annotations in {folder}: expected SPair-71k\'s layout, '
                                f'{root}/PairAnnotation/{{trn,val,test}}/*.json and {root}/JPEGImages/<category>/')
    pairs = []
    for file in files:
        ann = json.loads(file.read_text())
        missing = [k for k in ('src_imname', 'trg_imname', 'category', 'src_kps', 'trg_kps', 'src_bndbox',
                               'trg_bndbox') if k not in ann]
        if missing:
            raise ValueError(f'{file}: missing SPair-71k fields {missing}')
        category = ann['category']
        if not (root / 'JPEGImages' / category).is_dir():
            raise FileNotFoundError(f'{file}: category {category!r} has no image folder {root / "JPEGImages" / category}')
        sizes = [ann[k][:2] if k in ann else None for k in ('src_imsize', 'trg_imsize')]
        pairs.append(_pair(file.stem, category, root / 'JPEGImages' / category / ann['src_imname'],
                           root / 'JPEGImages' / category / ann['trg_imname'],
                           _points(ann['src_kps'], file, 'src_kps'), _points(ann['trg_kps'], file, 'trg_kps'),
                           ann['src_bndbox'], ann['trg_bndbox'], file, *sizes))
    return pairs


def _find_image(relative: str, category: str, roots: list[Path], where: str) -> Path:
    candidates = [r / relative for r in roots] + [r / category / relative for r in roots]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f'{where}: image {relative!r} not found; looked at {[str(c) for c in candidates]}')


def load_pair_list(path: str | Path, image_root: str | Path | None = None) -> list[Pair]:
    """A list-of-pairs JSON (the paper's format). Image paths are relative to ``image_root``, else to the
    JSON's folder (or its ``<category>/`` subfolder, as ``spair_71k_test-6.json`` writes them)."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f'pair list {path} does not exist') from None
    if not isinstance(entries, list):
        raise ValueError(f'{path}: expected a JSON list of pairs (source_path, target_path, source_points, ...)')
    roots = [Path(image_root)] if image_root is not None else []
    roots += [path.parent, path.parent / 'JPEGImages']
    pairs = []
    for i, ann in enumerate(entries):
        where = f'{path} entry {i}'
        missing = [k for k in ('source_path', 'target_path', 'source_points', 'target_points', 'category',
                               'source_bounding_box', 'target_bounding_box') if k not in ann]
        if missing:
            raise ValueError(f'{where}: missing fields {missing}')
        category = ann['category']
        source = _find_image(ann['source_path'], category, roots, where)
        target = _find_image(ann['target_path'], category, roots, where)
        pairs.append(_pair(f'{i:06d}-{source.stem}-{target.stem}:{category}', category, source, target,
                           _points(ann['source_points'], where, 'source_points'),
                           _points(ann['target_points'], where, 'target_points'),
                           ann['source_bounding_box'], ann['target_bounding_box'], where))
    return pairs


def find_pairs(data: str | Path, split: str) -> list[Pair]:
    """``split`` of ``data``: an SPair-71k split name (``trn``, ``val``, ``test``) under an SPair-71k root, or a
    list-of-pairs JSON (a path, or a file name inside ``data`` or ``data/JPEGImages``)."""
    data = Path(data)
    if split.endswith('.json'):
        for candidate in (Path(split), data / split, data / 'JPEGImages' / split):
            if candidate.is_file():
                return load_pair_list(candidate, data / 'JPEGImages' if (data / 'JPEGImages').is_dir() else None)
        raise FileNotFoundError(f'pair list {split!r} not found as a path, in {data} or in {data / "JPEGImages"}')
    if data.suffix == '.json':
        return load_pair_list(data)
    if not (data / 'PairAnnotation').is_dir():
        raise FileNotFoundError(f'{data} is not an SPair-71k root: expected {data}/PairAnnotation/{{trn,val,test}}/ '
                                f'and {data}/JPEGImages/<category>/ (or pass a list-of-pairs .json)')
    return load_spair(data, split)
