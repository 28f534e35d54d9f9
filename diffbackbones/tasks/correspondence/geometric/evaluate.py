"""Geometric correspondence as one call: ``evaluate_geometric`` estimates the homography of every HPatches
pair from keypoints described by a backbone's features, and returns a ``GeometricResult``.

    result = evaluate_geometric('shapes_sd_tiny', 'data/geo')          # the embedded set
    print(result.table())                                               # corner error and accuracy
    result.save('work_dirs/geometric')                                  # geometric.json and pictures/

The protocol (HPatches homography estimation, as CAPS ran it and DIFT followed):

1. Keypoints: the ``keypoints`` (1000) strongest OpenCV SIFT keypoints of each image (SuperPoint's weights,
   which CAPS and DIFT used, cannot be fetched here); ``detector=`` takes any callable instead.
2. Descriptors: the backbone's levels (each image resized to the working size, the levels kept on the
   working grid) sampled bilinearly at each keypoint, each level L2-normalised, then the concatenation.
3. Matching: mutual nearest neighbours by cosine similarity.
4. H: ``cv2.findHomography`` with RANSAC, reprojection threshold ``ransac_threshold`` (3 px, as
   SuperPoint's evaluation code and DIFT's script for its ADM features); ``estimator='lmeds'`` is what
   DIFT's script runs for its SD features.
5. Score: the mean distance between image 1's four corners warped by the estimated and by the true H; a
   pair is correct at e px when that is <= e, for e in 1, 3 and 5. A pair where no H is found counts as wrong
   at every e and is left out of the mean error (the table says how many there were).

Sequences: all found, less the 8 over 1600 x 1200 that D2-Net's download script deletes (CAPS and DIFT
evaluate the 108 left: 540 pairs); ``exclude=()`` keeps them. Descriptors are sampled at the exact pixel
centres; DIFT's script normalises coordinates as if align_corners=True but samples with False, a sub-cell
shift this does not copy. DIFT's own setting on HPatches: SD2.1 at 768 x 768, ``up-level2-upsampler-out``,
t = 0, an ensemble of 8, the empty prompt, LMEDS, SuperPoint's keypoints.

The SIFT row runs steps 3-5 on SIFT's own descriptors at the same keypoints: the baseline that isolates the
descriptor. Images are evaluated at their own size unless ``resize`` = (w, h) is given (SuperPoint's
evaluation resizes HPatches to 640 x 480); the homography is then rescaled with the images.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from diffbackbones.utils.outputs import peak_rss_gb, refuse_earlier_run
from ..features import build_feature_source, weights_label
from .hpatches import D2NET_EXCLUDED, KINDS, load_hpatches
from .homography import (RANSAC_THRESHOLD, corner_error, describe, estimate_homography, mutual_nearest_neighbours,
                         sift_keypoints)

__all__ = ['evaluate_geometric', 'GeometricResult', 'THRESHOLDS', 'RESULT_FILE']

THRESHOLDS = (1, 3, 5)
RESULT_FILE = 'geometric.json'
SIFT = 'SIFT'

Detector = Callable[[np.ndarray], np.ndarray]


def _read(path: Path, size: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    """The image as (H, W, 3) uint8 (resized to ``size`` when given) and the 3 x 3 map of its pixels onto
    the returned ones (pixel centres kept: x' = (x + 0.5) s - 0.5)."""
    with Image.open(path) as image:
        image = image.convert('RGB')
        scale = np.eye(3)
        if size is not None and image.size != tuple(size):
            sx, sy = size[0] / image.width, size[1] / image.height
            scale = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])
            image = image.resize(tuple(size), Image.BICUBIC)
        return np.asarray(image).copy(), scale


def _points(detector: str | Detector, image: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray | None]:
    if detector == 'sift':
        return sift_keypoints(image, count)
    points = np.asarray(detector(image), np.float32).reshape(-1, 2)[:count]
    return points, None


def evaluate_geometric(model: str, data: str | Path, *, activations: str | Sequence = 'practical',
                       levels: Sequence[int] | None = None, pretrained: bool | str | None = None, prompt: str = '',
                       detector: str | Detector = 'sift', keypoints: int = 1000,
                       ransac_threshold: float = RANSAC_THRESHOLD, estimator: str = 'ransac',
                       resize: tuple[int, int] | None = None, kinds: Sequence[str] = ('illumination', 'viewpoint'),
                       exclude: Sequence[str] = D2NET_EXCLUDED, sift_baseline: bool = True,
                       pictures: int = 4, cache_mb: float = 512, progress: bool = False,
                       **backbone_options: Any) -> GeometricResult:
    """HPatches homography estimation with ``model``'s activations as keypoint descriptors.

    Args:
        model: Zoo name (``'sd21'``, ``'shapes_sd_tiny'``, ``'test_sd_tiny'``, ...).
        data: HPatches' ``hpatches-sequences-release`` folder (or its parent), or the embedded set
            (``make_geometric_dataset``).
        activations: A preset name of the model (default ``'practical'``), a preset file, a layer id or a list.
        levels: Indices of the levels to keep; None keeps all.
        pretrained: As ``DiffusionBackbone``'s; None: the zoo's weights, random for the test models.
        prompt: The prompt every image is encoded with (DIFT uses the empty prompt off SPair-71k).
        detector: ``'sift'``, or a callable taking an (H, W, 3) uint8 image and returning (N, 2) x, y pixels.
        keypoints: The most keypoints kept per image (the strongest; SuperPoint's evaluation: 1000).
        ransac_threshold: ``cv2.findHomography``'s reprojection threshold in pixels (RANSAC).
        estimator: ``'ransac'`` (default) or ``'lmeds'`` (what DIFT's script runs for its SD features).
        resize: (w, h) every image is resized to before detection (the homographies with them); None: each
            image's own size (DIFT's protocol: errors in HPatches' own pixels).
        exclude: Sequences left out (default: the 8 that D2-Net's download deletes, as CAPS and DIFT; ``()``
            for all).
        kinds: ``'illumination'`` (i_*) and/or ``'viewpoint'`` (v_*) sequences.
        sift_baseline: Add the row of SIFT's own descriptors (``detector='sift'`` only).
        pictures: Pairs whose matches ``GeometricResult.save`` draws: image 1 against image 6 of sequences
            spread over the set (illumination and viewpoint).
        cache_mb: Image features kept in memory (each reference image is used five times).
        progress: Show a progress bar.
        **backbone_options: ``DiffusionBackbone`` options (``t``, ``ensemble_size``, ``image_size``, ``dtype``...).

    Returns:
        A ``GeometricResult``: ``.summary`` (per method and split: pairs, failures, mean corner error,
        accuracy at 1/3/5 px in %), ``.table()``, ``.save(folder)``, ``.pairs`` (per-pair records).
    """
    start = time.time()
    if not (detector == 'sift' or callable(detector)):
        raise ValueError(f"detector must be 'sift' or a callable image -> (N, 2) points; got {detector!r}")
    if keypoints < 4:
        raise ValueError(f'keypoints must be at least 4 (a homography needs 4 matches); got {keypoints}')
    pairs = load_hpatches(data, tuple(kinds), exclude=tuple(exclude))
    if not pairs:
        raise ValueError(f'no pairs of kinds {list(kinds)} in {data}')
    features = build_feature_source(model, activations, levels, pretrained, prompt, [prompt], cache_mb,
                                    **backbone_options)
    label = weights_label(model, features.settings['pretrained'])
    methods = [label] + ([SIFT] if sift_baseline and detector == 'sift' else [])
    detections: dict[Path, tuple] = {}

    def detect(path: Path) -> tuple:
        if path not in detections:  # image 1 of a sequence is in five pairs
            image, scale = _read(path, resize)
            points, sift = _points(detector, image, keypoints)
            wh = (image.shape[1], image.shape[0])
            ours = describe(features(path, ''), points, wh)  # the prompt is no template
            if sift is not None:  # unit length, as ours: the matcher compares by dot product
                sift = sift / np.maximum(np.linalg.norm(sift, axis=1, keepdims=True), 1e-12)
            if len(detections) > 16:  # the pairs come sequence by sequence: keep only the recent images
                detections.clear()
            detections[path] = (image, scale, points, {label: ours, SIFT: sift})
        return detections[path]

    records, drawn = [], []
    for pair in tqdm(pairs, desc='hpatches', disable=not progress):
        source, source_scale, source_points, source_descriptors = detect(pair.source)
        target, target_scale, target_points, target_descriptors = detect(pair.target)
        H_true = target_scale @ pair.homography @ np.linalg.inv(source_scale)
        h, w = source.shape[:2]
        record = dict(pair=pair.name, kind=pair.kind, keypoints=[len(source_points), len(target_points)])
        for method in methods:
            matches = mutual_nearest_neighbours(source_descriptors[method], target_descriptors[method])
            H, inliers = estimate_homography(source_points[matches[:, 0]], target_points[matches[:, 1]],
                                             ransac_threshold, estimator)
            record[method] = dict(matches=len(matches), inliers=int(inliers.sum()),
                                  corner_error=corner_error(H, H_true, w, h))
            if method == label and pair.index == 6:  # the hardest pair of each sequence may be drawn
                drawn.append((pair, source, target, source_points[matches[:, 0]], target_points[matches[:, 1]],
                              inliers))
        records.append(record)
    settings = dict(model=model, data=str(data), levels=None if levels is None else list(levels), prompt=prompt,
                    detector=detector if isinstance(detector, str) else repr(detector), keypoints=keypoints,
                    ransac_threshold=ransac_threshold, estimator=estimator, resize=resize, kinds=list(kinds),
                    **features.settings)
    return GeometricResult(settings=settings, methods=methods, pairs=records, summary=summarize(records, methods),
                           working_size=features.size, peak_rss_gb=peak_rss_gb(), seconds=time.time() - start,
                           drawn=[drawn[i] for i in sorted(set(np.linspace(0, len(drawn) - 1, pictures).round()
                                                                     .astype(int)))] if drawn and pictures else [])


def summarize(records: Sequence[dict], methods: Sequence[str]) -> dict:
    """Per method and split ('all', 'illumination', 'viewpoint'): pairs, failed (no H), mean corner error
    over the pairs with an H, and accuracy at each threshold (% of all pairs)."""
    summary = {}
    for method in methods:
        summary[method] = {}
        for split in ('all', *KINDS.values()):
            errors = np.array([r[method]['corner_error'] for r in records if split in ('all', r['kind'])])
            if not len(errors):
                continue
            found = errors[np.isfinite(errors)]
            summary[method][split] = dict(
                pairs=len(errors), failed=int(len(errors) - len(found)),
                mean_error=float(found.mean()) if len(found) else float('nan'),
                **{f'acc@{e}': float(100 * (errors <= e).mean()) for e in THRESHOLDS})
    return summary


@dataclass
class GeometricResult:
    """What ``evaluate_geometric`` measured: ``summary`` per method and split, ``pairs`` per pair (matches,
    RANSAC inliers, corner error of each method), ``settings``, ``working_size``, time and memory."""
    settings: dict
    methods: list[str]
    pairs: list[dict]
    summary: dict
    working_size: tuple[int, int]
    peak_rss_gb: float
    seconds: float
    drawn: list = field(default_factory=list, repr=False)

    def table(self) -> str:
        """Corner error (px) and accuracy (% of pairs within 1, 3, 5 px), per method and split."""
        header = (f'{"method":<26} {"split":<13} {"pairs":>5} {"no H":>5} {"mean err":>9} '
                  + ' '.join(f'{"acc@" + str(e):>6}' for e in THRESHOLDS))
        estimator = ('LMEDS' if self.settings['estimator'] == 'lmeds'
                     else f'RANSAC threshold {self.settings["ransac_threshold"]:g} px')
        lines = [f'HPatches homography estimation: {len(self.pairs)} pairs; working size '
                 f'{self.working_size[0]} x {self.working_size[1]}; {estimator}', header]
        for method in self.methods:
            for split, row in self.summary[method].items():
                lines.append(f'{method:<26} {split:<13} {row["pairs"]:>5} {row["failed"]:>5} '
                             f'{row["mean_error"]:>9.2f} ' + ' '.join(f'{row[f"acc@{e}"]:>6.1f}' for e in THRESHOLDS))
        return '\n'.join(lines)

    def to_dict(self) -> dict:
        return dict(settings=self.settings, methods=self.methods, summary=self.summary, pairs=self.pairs,
                    working_size=list(self.working_size), peak_rss_gb=self.peak_rss_gb, seconds=self.seconds)

    def save(self, out_dir: str | Path, overwrite: bool = False) -> Path:
        """Write ``geometric.json`` and ``pictures/`` (the first drawn pairs: image 1 | image k, each mutual
        match joined, green when RANSAC kept it, red not) into ``out_dir``; an earlier run is kept unless
        ``overwrite`` (``FileExistsError``)."""
        out = Path(out_dir)
        refuse_earlier_run(out / RESULT_FILE, overwrite)
        (out / 'pictures').mkdir(parents=True, exist_ok=True)
        for pair, source, target, a, b, inliers in self.drawn:
            draw_matches(out / 'pictures' / f'{pair.sequence}_1-{pair.index}.png', source, target, a, b, inliers)
        (out / RESULT_FILE).write_text(json.dumps(self.to_dict(), indent=1, default=str))
        return out


def draw_matches(path: Path, source: np.ndarray, target: np.ndarray, a: np.ndarray, b: np.ndarray,
                 inliers: np.ndarray) -> Path:
    """Source | target with each match joined: green when an inlier, red not (a PNG, small images x2)."""
    zoom = 2 if max(source.shape[:2]) < 400 else 1
    h = max(source.shape[0], target.shape[0])
    canvas = Image.new('RGB', (source.shape[1] + target.shape[1], h))
    canvas.paste(Image.fromarray(source), (0, 0))
    canvas.paste(Image.fromarray(target), (source.shape[1], 0))
    canvas = canvas.resize((canvas.width * zoom, canvas.height * zoom), Image.NEAREST)
    pen = ImageDraw.Draw(canvas)
    for (x0, y0), (x1, y1), ok in zip(a, b, inliers):
        pen.line([((x0 + 0.5) * zoom, (y0 + 0.5) * zoom), ((x1 + 0.5 + source.shape[1]) * zoom, (y1 + 0.5) * zoom)],
                 fill=(40, 220, 60) if ok else (230, 40, 40), width=1)
    canvas.save(path)
    return Path(path)
