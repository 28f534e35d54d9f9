"""The pieces of homography estimation from matched keypoints (HPatches' protocol as CAPS and DIFT run it).

- ``sift_keypoints``: OpenCV SIFT keypoints (x, y in pixels, pixel centres at integers) and descriptors.
- ``describe``: a backbone's levels sampled bilinearly at keypoints, each level L2-normalised, then the
  concatenation L2-normalised again (every level weighs the same, whatever its channel count).
- ``mutual_nearest_neighbours``: the pairs (i, j) where j is i's most similar and i is j's.
- ``estimate_homography``: ``cv2.findHomography`` (RANSAC, or LMEDS) on the matched points.
- ``corner_error``: the mean distance between the image corners warped by the estimated and the true H.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

__all__ = ['sift_keypoints', 'describe', 'mutual_nearest_neighbours', 'estimate_homography', 'corner_error',
           'image_corners', 'RANSAC_THRESHOLD', 'ESTIMATORS']

# cv2.findHomography's ransacReprojThreshold (pixels). The value is 3.0, as in SuperPoint's evaluation code
# (compute_homography), which CAPS and DIFT follow; OpenCV's own default is also 3.
RANSAC_THRESHOLD = 3.0
ESTIMATORS = {'ransac': cv2.RANSAC, 'lmeds': cv2.LMEDS}


def sift_keypoints(image: np.ndarray, count: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` strongest SIFT keypoints of an (H, W, 3) uint8 RGB image: ((N, 2) x, y float32,
    (N, 128) float32 descriptors). OpenCV's ``nfeatures`` keeps the strongest by response."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    keypoints, descriptors = cv2.SIFT_create(nfeatures=count).detectAndCompute(grey, None)
    if not keypoints:
        return np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32)
    points = np.array([k.pt for k in keypoints], np.float32)
    # SIFT returns a keypoint once per orientation: keep the first of each location (one descriptor per point)
    _, first = np.unique(points, axis=0, return_index=True)
    first = np.sort(first)[:count]
    return points[first], descriptors[first].astype(np.float32)


def describe(levels: Sequence[torch.Tensor], points: np.ndarray, image_wh: tuple[int, int]) -> np.ndarray:
    """(N, C) unit descriptors of ``points`` (x, y pixels of an image ``image_wh`` = (w, h) wide and high).

    Each level (C_i, h_i, w_i), whatever its grid, covers the whole image: a point maps to
    ((x + 0.5) / w, (y + 0.5) / h) of it and is read bilinearly (``grid_sample``, align_corners=False,
    borders clamped). Each level's vectors are L2-normalised before they are concatenated.
    """
    w, h = image_wh
    if len(points) == 0:
        return np.zeros((0, sum(level.shape[0] for level in levels)), np.float32)
    xy = torch.as_tensor(np.asarray(points, np.float32))
    grid = torch.stack([(xy[:, 0] + 0.5) / w * 2 - 1, (xy[:, 1] + 0.5) / h * 2 - 1], -1)[None, None]  # (1, 1, N, 2)
    parts = []
    for level in levels:
        sampled = F.grid_sample(level[None].float(), grid, mode='bilinear', padding_mode='border',
                                align_corners=False)[0, :, 0].T  # (N, C_i)
        parts.append(F.normalize(sampled, dim=1))
    return F.normalize(torch.cat(parts, 1), dim=1).numpy()


def mutual_nearest_neighbours(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(M, 2) index pairs (i, j): b[j] is a[i]'s most similar descriptor (largest dot product; for unit
    vectors the nearest in L2) and a[i] is b[j]'s."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((0, 2), int)
    similarity = torch.as_tensor(a) @ torch.as_tensor(b).T
    forward, backward = similarity.argmax(1), similarity.argmax(0)
    i = torch.arange(len(a))
    mutual = backward[forward] == i
    return torch.stack([i[mutual], forward[mutual]], 1).numpy()


def estimate_homography(source: np.ndarray, target: np.ndarray, threshold: float = RANSAC_THRESHOLD,
                        estimator: str = 'ransac') -> tuple[np.ndarray | None, np.ndarray]:
    """H (3 x 3, source pixels to target pixels) from matched (M, 2) points, and the inlier mask.

    ``estimator``: ``'ransac'`` (reprojection ``threshold`` in pixels) or ``'lmeds'`` (DIFT's choice for its SD
    features; no threshold). None when there are fewer than 4 matches or OpenCV finds no model.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f'estimator must be one of {sorted(ESTIMATORS)}; got {estimator!r}')
    if len(source) < 4:
        return None, np.zeros(len(source), bool)
    H, inliers = cv2.findHomography(np.asarray(source, np.float64), np.asarray(target, np.float64),
                                    ESTIMATORS[estimator], threshold)
    if H is None:
        return None, np.zeros(len(source), bool)
    return H, inliers.ravel().astype(bool)


def image_corners(w: int, h: int) -> np.ndarray:
    """The four corners SuperPoint's evaluation warps: (0, 0), (0, h - 1), (w - 1, 0), (w - 1, h - 1)."""
    return np.array([[0, 0], [0, h - 1], [w - 1, 0], [w - 1, h - 1]], np.float64)


def _warp(H: np.ndarray, points: np.ndarray) -> np.ndarray:
    warped = np.concatenate([points, np.ones((len(points), 1))], 1) @ np.asarray(H, np.float64).T
    return warped[:, :2] / warped[:, 2:]


def corner_error(estimated: np.ndarray | None, true: np.ndarray, w: int, h: int) -> float:
    """Mean distance (pixels) between the source image's corners warped by ``estimated`` and by ``true``;
    inf when no homography was estimated (the pair counts as wrong at every threshold)."""
    if estimated is None:
        return float('inf')
    corners = image_corners(w, h)
    return float(np.linalg.norm(_warp(estimated, corners) - _warp(true, corners), axis=1).mean())
