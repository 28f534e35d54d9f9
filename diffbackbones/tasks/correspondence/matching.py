"""Nearest-neighbour matching of keypoints by cosine similarity, and PCK.

A source keypoint's feature vector is compared with every pixel of the target's feature map, both
upsampled bilinearly to a pixel grid (DIFT: each image's own size; the paper's trained protocol: 512 x
512); the most similar target pixel (hard argmax) is the prediction. The upsampled target map is
never materialised: it is read in bands of rows (``UpsampledMap``), so a 1,280-channel map of a 500 x
375 image costs a few MB at a time instead of a GB.

PCK@alpha counts a prediction correct when it lies within alpha x L of the true target keypoint, L the
larger side of the target's bounding box ("bbox") or of the target image ("img"). Both are reported per
keypoint (all keypoints pooled) and per image (the mean over pairs of each pair's fraction, DIFT's
"per image PCK").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from diffbackbones.utils.resample import UpsampledMap

__all__ = ['match_points', 'rescale_points', 'pck_correct', 'PCKTable', 'evaluate_pairs']


Maps = Union[torch.Tensor, Sequence[torch.Tensor]]


def _as_list(maps: Maps) -> list[torch.Tensor]:
    return [maps] if isinstance(maps, torch.Tensor) else list(maps)


def rescale_points(points: np.ndarray, old_wh: tuple[int, int], new_wh: tuple[int, int]) -> np.ndarray:
    """(K, 2) (x, y) points from an image of size ``old_wh`` to one of ``new_wh`` (the paper's rescale_points)."""
    return points * np.array([new_wh[0] / old_wh[0], new_wh[1] / old_wh[1]])


def _pixel_index(points: np.ndarray, wh: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    # Round half to even (numpy's round, as the paper's points_to_idxs), then clip into the grid.
    x = np.clip(np.round(points[:, 0]), 0, wh[0] - 1)
    y = np.clip(np.round(points[:, 1]), 0, wh[1] - 1)
    return torch.from_numpy(y).long(), torch.from_numpy(x).long()


@torch.no_grad()
def match_points(source: Maps, target: Maps, source_points: np.ndarray,
                 source_wh: tuple[int, int], target_wh: tuple[int, int], band_bytes: int = 64 * 2 ** 20) -> np.ndarray:
    """Predicted (K, 2) (x, y) target pixels for ``source_points`` (x, y pixels of the ``source_wh`` grid).

    Args:
        source, target: A (C, h, w) feature map, or a list of them (levels on different grids), each
            upsampled bilinearly to ``source_wh`` and ``target_wh`` (width, height) as ``F.interpolate``
            would, and concatenated along channels.
        band_bytes: Memory for one band of upsampled target rows.
    """
    source, target = _as_list(source), _as_list(target)
    y, x = _pixel_index(source_points, source_wh)
    vectors = F.normalize(torch.cat([UpsampledMap(m, source_wh[::-1]).at(y, x) for m in source], 1), dim=1)  # (K, C)
    maps = [UpsampledMap(m, target_wh[::-1]) for m in target]
    h, w = target_wh[1], target_wh[0]
    rows = max(1, band_bytes // (4 * w * vectors.shape[1]))
    best = torch.full((len(vectors),), -float('inf'))
    where = torch.zeros(len(vectors), dtype=torch.long)
    for start in range(0, h, rows):
        band = torch.cat([m.rows(start, min(h, start + rows)) for m in maps])            # (C, r, w)
        band = F.normalize(band, dim=0).flatten(1)
        value, index = (vectors @ band).max(dim=1)
        better = value > best  # strictly: the first maximum wins, as one argmax over the whole map
        best[better], where[better] = value[better], index[better] + start * w
    return np.stack([(where % w).numpy(), (where // w).numpy()], axis=1).astype(np.float64)


def pck_correct(predicted: np.ndarray, truth: np.ndarray, bbox, image_wh, alpha: float = 0.1) -> dict[str, np.ndarray]:
    """Per keypoint: is the prediction within alpha x the target box's / image's larger side (inclusive)?"""
    distance = np.linalg.norm(predicted - truth, axis=1)
    x0, y0, x1, y1 = bbox
    return {'bbox': distance <= alpha * max(x1 - x0, y1 - y0), 'img': distance <= alpha * max(image_wh)}


@dataclass
class PCKTable:
    """PCK accumulated per category: per keypoint and per image, by bbox and by image size."""
    alpha: float = 0.1
    rows: dict = field(default_factory=dict)   # category -> {'bbox'/'img': [per-pair bool arrays]}

    def add(self, category: str, correct: dict[str, np.ndarray]) -> None:
        entry = self.rows.setdefault(category, {'bbox': [], 'img': []})
        for key in ('bbox', 'img'):
            entry[key].append(np.asarray(correct[key], bool))

    @staticmethod
    def _scores(entry: dict) -> dict[str, float]:
        out = {}
        for key in ('bbox', 'img'):
            out[f'{key}_per_point'] = 100 * float(np.concatenate(entry[key]).mean())
            out[f'{key}_per_image'] = 100 * float(np.mean([c.mean() for c in entry[key]]))
        out['pairs'] = len(entry['bbox'])
        out['keypoints'] = int(sum(len(c) for c in entry['bbox']))
        return out

    def summary(self) -> dict[str, dict[str, float]]:
        """{category: scores, ..., 'all': scores over every pair}, PCK in percent."""
        table = {c: self._scores(self.rows[c]) for c in sorted(self.rows)}
        pooled = {key: [c for entry in self.rows.values() for c in entry[key]] for key in ('bbox', 'img')}
        table['all'] = self._scores(pooled)
        return table

    def format(self) -> str:
        table = self.summary()
        a = f'{self.alpha:g}'
        head = (f'{"category":>12} {"pairs":>6} {"kps":>6}  {"PCK@" + a + " bbox":>15} {"(per image)":>11}  '
                f'{"PCK@" + a + " img":>14} {"(per image)":>11}')
        lines = [head]
        for name, s in table.items():
            lines.append(f'{name:>12} {s["pairs"]:6d} {s["keypoints"]:6d}  {s["bbox_per_point"]:15.2f} '
                         f'{s["bbox_per_image"]:11.2f}  {s["img_per_point"]:14.2f} {s["img_per_image"]:11.2f}')
        return '\n'.join(lines)


def evaluate_pairs(pairs: Sequence, maps_of: Callable, grid: int | None = None, alpha: float = 0.1,
                   progress: Callable | None = None) -> tuple[PCKTable, list[np.ndarray]]:
    """PCK of nearest-neighbour matches over ``pairs``; also the (K, 2) predictions in target pixels.

    Args:
        maps_of: ``maps_of(path, category)`` -> an image's feature map(s).
        grid: None matches on each image's own pixel grid (DIFT); S matches on an S x S grid and maps
            the predictions back to the target image (the paper's trained protocol, S = 512).
    """
    table, predictions = PCKTable(alpha), []
    for pair in (progress or (lambda x: x))(pairs):
        source, target = maps_of(pair.source, pair.category), maps_of(pair.target, pair.category)
        if grid is None:
            predicted = match_points(source, target, pair.source_points, pair.source_size, pair.target_size)
        else:
            square = (grid, grid)
            predicted = match_points(source, target, rescale_points(pair.source_points, pair.source_size, square),
                                     square, square)
            predicted = rescale_points(predicted, square, pair.target_size)
        table.add(pair.category, pck_correct(predicted, pair.target_points, pair.target_bbox, pair.target_size, alpha))
        predictions.append(predicted)
    return table, predictions
