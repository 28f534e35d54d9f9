"""JHMDB keypoint propagation, as VideoWalk (CRW) evaluates it (``code/data/jhmdb.py``, ``eval/eval_pck.py``).

    root/Rename_Images/<action>/<video>/00001.png ...
    root/joint_positions/<action>/<video>/joint_positions.mat      (pos_img: 2 x J x T, 1-based pixels)
    root/splits/<action>_test_split<N>.txt                          (optional: "<video>.avi 2" marks a test video)

- Frame 0's keypoints become one Gaussian heat map per joint on the feature grid (sigma 0.5 cells, an
  unnormalised 4 x 4 patch, CRW's ``draw_labelmap_np``) plus a background channel (1 where no joint is).
- After propagation, a joint's position is the soft-argmax of its 3 largest cells; a joint with no mass left
  is invisible (-1), and is then left out of the PCK.
- PCK@a: a predicted joint is correct when its distance to the truth is <= a x 0.6 x the diagonal of the
  tight box around the frame's true joints. Frame 0 (given) is not scored. The score is the mean over joint
  indices of each joint's percentage (not pooled over joints).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ['JhmdbVideo', 'load_jhmdb', 'keypoint_maps', 'read_keypoints', 'pck', 'SIGMA', 'BOX_SCALE']

SIGMA = 0.5       # heat-map sigma, grid cells (CRW's JhmdbSet default)
BOX_SCALE = 0.6   # PCK's reference length: 0.6 x the diagonal of the true joints' box (CRW's eval_pck.py)


@dataclass(frozen=True)
class JhmdbVideo:
    """One video: frames in order and its joints, (T, J, 2) x, y pixels, 0-based."""
    name: str
    frames: tuple[Path, ...]
    joints: np.ndarray


def _test_videos(root: Path, split: int) -> set[str] | None:
    lists = sorted((root / 'splits').glob(f'*_test_split{split}.txt')) if (root / 'splits').is_dir() else []
    if not lists:
        return None
    names = set()
    for listing in lists:
        for line in listing.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == '2':
                names.add(Path(parts[0]).stem)
    return names


def load_jhmdb(root: str | Path, split: int = 1) -> list[JhmdbVideo]:
    """Every video with frames and joint positions under ``root`` (the test videos of ``split`` when
    ``root/splits/`` has its lists)."""
    from scipy.io import loadmat  # scipy comes with mmseg's requirements; only JHMDB needs it

    root = Path(root)
    if not (root / 'Rename_Images').is_dir() or not (root / 'joint_positions').is_dir():
        raise FileNotFoundError(f'{root} is not a JHMDB folder: expected Rename_Images/<action>/<video>/*.png and '
                                'joint_positions/<action>/<video>/joint_positions.mat')
    wanted = _test_videos(root, split)
    videos = []
    for mat in sorted((root / 'joint_positions').glob('*/*/joint_positions.mat')):
        action, video = mat.parent.parent.name, mat.parent.name
        if wanted is not None and video not in wanted:
            continue
        frames = tuple(sorted((root / 'Rename_Images' / action / video).glob('*.png'), key=lambda p: int(p.stem)))
        positions = np.asarray(loadmat(str(mat))['pos_img'], np.float64)  # (2, J, T), 1-based
        if positions.ndim != 3 or positions.shape[0] != 2:
            raise ValueError(f'{mat}: pos_img must be 2 x J x T; got {positions.shape}')
        if len(frames) < positions.shape[2]:
            raise FileNotFoundError(f'{root / "Rename_Images" / action / video} has {len(frames)} frames for '
                                    f'{positions.shape[2]} annotated ones')
        videos.append(JhmdbVideo(f'{action}/{video}', frames[:positions.shape[2]],
                                 positions.transpose(2, 1, 0) - 1))
    if not videos:
        raise ValueError(f'no JHMDB videos under {root}' + (f' in test split {split}' if wanted is not None else ''))
    return videos


def keypoint_maps(points: np.ndarray, h: int, w: int, sigma: float = SIGMA) -> torch.Tensor:
    """(J + 1, h, w): background first, then a Gaussian patch per joint at ``points`` (J, 2) x, y grid cells,
    placed as CRW's ``draw_labelmap_np`` does (a joint entirely off the grid gets no mass)."""
    size = int(6 * sigma + 1)
    offsets = np.arange(size, dtype=np.float64)
    centre = size // 2
    patch = np.exp(-((offsets[None] - centre) ** 2 + (offsets[:, None] - centre) ** 2) / (2 * sigma ** 2))
    maps = np.zeros((len(points), h, w), np.float32)
    for j, (x, y) in enumerate(points):
        left, top = int(x - 3 * sigma), int(y - 3 * sigma)
        right, bottom = int(x + 3 * sigma + 1), int(y + 3 * sigma + 1)
        if left >= w or top >= h or right < 0 or bottom < 0:
            continue
        px0, px1 = max(0, -left), min(right, w) - left
        py0, py1 = max(0, -top), min(bottom, h) - top
        maps[j, max(0, top):min(bottom, h), max(0, left):min(right, w)] = patch[py0:py1, px0:px1]
    background = (maps.sum(0, keepdims=True) == 0).astype(np.float32)
    return torch.from_numpy(np.concatenate([background, maps]))


def read_keypoints(maps: torch.Tensor, topk: int = 3) -> np.ndarray:
    """(J, 2) x, y grid cells from propagated (J + 1, h, w) maps: the weighted mean of each joint's ``topk``
    largest cells; -1 for a joint with no mass."""
    joints = maps[1:].reshape(maps.shape[0] - 1, -1)
    w = maps.shape[2]
    values, index = torch.topk(joints, k=topk, dim=1)
    weights = values / values.sum(1, keepdim=True).clamp_min(1e-30)
    xy = torch.stack([((index % w).float() * weights).sum(1), ((index // w).float() * weights).sum(1)], 1)
    xy[joints.sum(1) == 0] = -1
    return xy.numpy()


def pck(predicted: list[np.ndarray], true: list[np.ndarray], thresholds=(0.1, 0.2)) -> dict[float, float]:
    """PCK@a in % for each threshold: ``predicted`` and ``true`` are per video (T, J, 2) pixel positions
    (predicted -1: invisible). Frame 0 is not scored; the mean over joint indices of per-joint PCK."""
    distances: dict[int, list[float]] = {}
    for p, t in zip(predicted, true):
        for frame in range(1, len(t)):
            visible = p[frame, :, 0] >= 0
            if not visible.any():
                continue
            box = BOX_SCALE * np.linalg.norm(t[frame, visible].max(0) - t[frame, visible].min(0))
            for j in np.flatnonzero(visible):
                distances.setdefault(j, []).append(np.linalg.norm(p[frame, j] - t[frame, j]) / max(box, 1e-12))
    if not distances:
        return {a: float('nan') for a in thresholds}
    return {a: float(np.mean([100 * np.mean(np.array(d) <= a) for d in distances.values()])) for a in thresholds}
