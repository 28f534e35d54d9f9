"""DAVIS-2017's own layout, and its J and F measures exactly as the official davis2017-evaluation computes them.

    root/JPEGImages/480p/<sequence>/00000.jpg ...
    root/Annotations/480p/<sequence>/00000.png ...   (palette PNGs: 0 background, 1..N the objects)
    root/ImageSets/2017/val.txt                      (one sequence name per line)

J (``region_similarity``) is the IoU of an object's predicted and true masks, 1 when both are empty. F
(``boundary_f_measure``) compares their boundaries (``boundary_map``, the official ``_seg2bmap``), each
dilated by a disk of radius ceil(0.008 x the image diagonal) pixels: precision, recall and their harmonic
mean, with the official conventions when a boundary is empty. The semi-supervised evaluation scores frames
1 .. n-2 (the first is given, the last is left out), each object its own mean over them; J-Mean and F-Mean
are means over all objects of all sequences, and J&F-Mean their mean.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

__all__ = ['DavisVideo', 'load_davis', 'read_labels', 'write_labels', 'region_similarity', 'boundary_map',
           'boundary_f_measure', 'score_video', 'BOUNDARY_TOLERANCE', 'PALETTE']

BOUNDARY_TOLERANCE = 0.008  # of the image diagonal (the official bound_th)
# DAVIS' palette: the colour of label i is the i-th RGB triple (background black)
PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128, 128, 0, 128, 0, 128, 128, 128, 128, 128,
           64, 0, 0, 191, 0, 0, 64, 128, 0, 191, 128, 0, 64, 0, 128] + [0] * (768 - 39)


@dataclass(frozen=True)
class DavisVideo:
    """One sequence: its frames and the annotation files beside them (the first one is the given mask)."""
    name: str
    frames: tuple[Path, ...]
    annotations: tuple[Path, ...]


def load_davis(root: str | Path, split: str = 'val', resolution: str = '480p') -> list[DavisVideo]:
    """The sequences of ``ImageSets/2017/<split>.txt`` (or every sequence when there is no such list)."""
    root = Path(root)
    frames_root, labels_root = root / 'JPEGImages' / resolution, root / 'Annotations' / resolution
    if not frames_root.is_dir() or not labels_root.is_dir():
        raise FileNotFoundError(f'{root} is not a DAVIS folder: expected JPEGImages/{resolution}/<sequence>/*.jpg and '
                                f'Annotations/{resolution}/<sequence>/*.png (write the embedded one with '
                                '`diffbackbones make-correspondence DIR --task temporal`)')
    listing = root / 'ImageSets' / '2017' / f'{split}.txt'
    names = (listing.read_text().split() if listing.is_file()
             else sorted(p.name for p in frames_root.iterdir() if p.is_dir()))
    videos = []
    for name in names:
        frames = tuple(sorted((frames_root / name).glob('*.jpg')))
        if not frames:
            raise FileNotFoundError(f'no frames in {frames_root / name} (listed in {listing})')
        annotations = tuple(labels_root / name / f'{f.stem}.png' for f in frames)
        missing = [a for a in annotations if not a.is_file()]
        if missing:
            raise FileNotFoundError(f'{len(missing)} annotation(s) of {name} missing, first {missing[0]}')
        videos.append(DavisVideo(name, frames, annotations))
    return videos


def read_labels(path: Path) -> np.ndarray:
    """(H, W) uint8 object ids of a palette PNG (255, DAVIS' void, counts as background as the official
    semi-supervised evaluation does)."""
    with Image.open(path) as image:
        labels = np.array(image if image.mode in ('P', 'L') else image.convert('L'))
    labels[labels == 255] = 0
    return labels


def write_labels(path: Path, labels: np.ndarray) -> None:
    image = Image.fromarray(labels.astype(np.uint8), mode='P')
    image.putpalette(PALETTE)
    image.save(path)


def region_similarity(predicted: np.ndarray, true: np.ndarray) -> float:
    """J: the IoU of two boolean masks; 1 when both are empty."""
    predicted, true = predicted.astype(bool), true.astype(bool)
    union = np.logical_or(predicted, true).sum()
    return 1.0 if union == 0 else float(np.logical_and(predicted, true).sum() / union)


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """The official ``_seg2bmap``: a pixel is on the boundary when it differs from its east, south or
    south-east neighbour (the last row compares east only, the last column south only)."""
    seg = mask.astype(bool)
    east, south, south_east = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    boundary = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    boundary[-1, :] = seg[-1, :] ^ east[-1, :]
    boundary[:, -1] = seg[:, -1] ^ south[:, -1]
    boundary[-1, -1] = False
    return boundary


def _disk(radius: int) -> np.ndarray:
    """skimage.morphology.disk: the offsets within ``radius`` (x^2 + y^2 <= r^2)."""
    offsets = np.arange(-radius, radius + 1)
    return (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius ** 2).astype(np.uint8)


def boundary_f_measure(predicted: np.ndarray, true: np.ndarray, tolerance: float = BOUNDARY_TOLERANCE) -> float:
    """F: the boundary F-measure of two boolean masks, boundaries matched within ceil(tolerance x diagonal)
    pixels (``tolerance`` >= 1 is taken as pixels)."""
    radius = tolerance if tolerance >= 1 else int(np.ceil(tolerance * np.linalg.norm(predicted.shape)))
    predicted_boundary, true_boundary = boundary_map(predicted), boundary_map(true)
    disk = _disk(int(radius))
    predicted_near = cv2.dilate(predicted_boundary.astype(np.uint8), disk).astype(bool)
    true_near = cv2.dilate(true_boundary.astype(np.uint8), disk).astype(bool)
    n_predicted, n_true = predicted_boundary.sum(), true_boundary.sum()
    if n_predicted == 0 and n_true > 0:
        precision, recall = 1.0, 0.0
    elif n_predicted > 0 and n_true == 0:
        precision, recall = 0.0, 1.0
    elif n_predicted == 0 and n_true == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = (predicted_boundary & true_near).sum() / n_predicted
        recall = (true_boundary & predicted_near).sum() / n_true
    return 0.0 if precision + recall == 0 else float(2 * precision * recall / (precision + recall))


def score_video(predicted: list[np.ndarray], true: list[np.ndarray]) -> dict[int, dict[str, float]]:
    """Per object id of the first true frame: the mean J and F over frames 1 .. n-2 (the official
    semi-supervised evaluation). Frames are (H, W) id maps of equal shapes."""
    if len(predicted) != len(true):
        raise ValueError(f'{len(predicted)} predicted frames for {len(true)} annotated ones')
    objects = range(1, int(true[0].max()) + 1)
    scored = range(1, len(true) - 1) if len(true) > 2 else range(len(true))
    result = {}
    for obj in objects:
        j = [region_similarity(predicted[i] == obj, true[i] == obj) for i in scored]
        f = [boundary_f_measure(predicted[i] == obj, true[i] == obj) for i in scored]
        result[obj] = dict(J=float(np.mean(j)), F=float(np.mean(f)))
    return result
