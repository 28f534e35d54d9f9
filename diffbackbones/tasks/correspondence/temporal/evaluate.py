"""Temporal correspondence as one call: ``evaluate_temporal`` propagates the first frame's labels through
each video by the affinity of a backbone's features, and returns a ``TemporalResult``.

    result = evaluate_temporal('shapes_sd_tiny', 'data/video')   # DAVIS layout, and JHMDB's in data/video/jhmdb
    print(result.table())                                         # J&F-Mean, J-Mean, F-Mean; PCK@0.1, @0.2
    result.save('work_dirs/temporal')                             # temporal.json and pictures/

Frames go through the backbone one by one (an image model sees each frame as an image). A frame's features
are its levels, each L2-normalised and resized (bilinear) to the finest level's grid, then concatenated.

- DAVIS-2017 (DINO's protocol, ``eval_video_segmentation.py``): frames resized so the short side is the
  working size (the model's, or ``short_side``) and the long side that times the aspect ratio, floored to a
  multiple of 64 (DINO: 480 and 832 for 854 x 480); frame 0's mask resized to the feature grid (nearest) and
  one-hot (background included); ``DAVIS_PROPAGATION``: the last 7 frames, a +-12-cell square neighbourhood,
  top 5, temperature 0.1. A predicted map is upsampled (bilinear) to the working size, each channel
  min-max normalised, the argmax taken, and resized (nearest) to the frame's size. J, F and J&F-Mean as
  the official davis2017-evaluation (``davis.py``).
- JHMDB (VideoWalk's): frames resized to a square of the working size (CRW: 320 x 320); joints as heat maps
  on the grid, read back by soft-argmax; ``JHMDB_PROPAGATION``: CRW's defaults (20 frames, radius 12, top 10,
  temperature 0.07) in DINO's propagation. PCK@0.1 and @0.2 (``jhmdb.py``).

Where this differs from VideoWalk on JHMDB, it is stated: the neighbourhood is DINO's square on every
context frame (CRW: a disk, and none on frame 0), and early frames have fewer context frames (CRW pads the
video with copies of frame 0).
"""
from __future__ import annotations

import itertools
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from diffbackbones.models.zoo import get_model_spec
from diffbackbones.utils.outputs import peak_rss_gb, refuse_earlier_run
from diffbackbones.utils.pictures import colorize_labels, side_by_side, stack_rows
from ..features import FeatureSource, build_feature_source, weights_label
from .davis import PALETTE, load_davis, read_labels, score_video
from .jhmdb import keypoint_maps, load_jhmdb, pck, read_keypoints
from .propagation import Propagation, one_hot, propagate

__all__ = ['evaluate_temporal', 'TemporalResult', 'DAVIS_PROPAGATION', 'JHMDB_PROPAGATION', 'frame_features',
           'davis_working_size', 'RESULT_FILE']

DAVIS_PROPAGATION = Propagation(context=7, radius=12, topk=5, temperature=0.1)    # DINO
JHMDB_PROPAGATION = Propagation(context=20, radius=12, topk=10, temperature=0.07)  # VideoWalk's defaults
PCK_THRESHOLDS = (0.1, 0.2)
RESULT_FILE = 'temporal.json'
HELD_STILL = "frame 0 held still"  # the baseline row: the given masks / joints copied to every frame


def frame_features(levels: Sequence[torch.Tensor]) -> torch.Tensor:
    """(C, h, w) on the finest level's grid: each level L2-normalised over channels, resized bilinearly."""
    grid = max((level.shape[-2:] for level in levels), key=lambda s: s[0] * s[1])
    return torch.cat([F.interpolate(F.normalize(level.float(), dim=0)[None], size=tuple(grid), mode='bilinear',
                                    align_corners=False)[0] for level in levels])


def davis_working_size(frame_wh: tuple[int, int], short_side: int) -> tuple[int, int]:
    """(w, h): DINO's rule, the short side ``short_side`` and the long one floored to a multiple of 64."""
    w, h = frame_wh
    long = int((short_side * max(w, h) / min(w, h)) // 64 * 64)
    long = max(long, short_side)
    return (long, short_side) if w >= h else (short_side, long)


def _find(data: Path) -> dict[str, Path]:
    found = {}
    if (data / 'JPEGImages').is_dir():
        found['davis'] = data
    for folder in (data, data / 'jhmdb'):
        if (folder / 'Rename_Images').is_dir():
            found['jhmdb'] = folder
    if not data.is_dir() or not found:
        raise FileNotFoundError(f'{data} holds neither DAVIS (JPEGImages/480p/, Annotations/480p/) nor JHMDB '
                                '(Rename_Images/, joint_positions/); write the embedded set with '
                                '`diffbackbones make-correspondence DIR --task temporal`')
    return found


def _labels_to_grid(labels: np.ndarray, grid_hw: tuple[int, int]) -> torch.Tensor:
    small = Image.fromarray(labels).resize(grid_hw[::-1], Image.NEAREST)
    return torch.from_numpy(np.array(small)).long()


def _upsampled_argmax(soft: torch.Tensor, work_hw: tuple[int, int], frame_hw: tuple[int, int]) -> np.ndarray:
    up = F.interpolate(soft[None], size=work_hw, mode='bilinear', align_corners=False)[0]
    low = up.amin(dim=(1, 2), keepdim=True)
    span = (up - low).amax(dim=(1, 2), keepdim=True)
    up = torch.where(up.amax(dim=(1, 2), keepdim=True) > 0, (up - low) / span.clamp_min(1e-30), up)  # norm_mask
    labels = up.argmax(0).to(torch.uint8).numpy()
    return np.array(Image.fromarray(labels).resize(frame_hw[::-1], Image.NEAREST))


def run_davis(source: FeatureSource, videos, protocol: Propagation, progress: bool = False):
    """Predicted id maps of every frame of every video (frame 0: the given one), the official scores, and those
    of the baseline that holds frame 0's masks still (per video and object)."""
    work_hw = source.size[::-1]
    predictions, scores, held = {}, {}, {}
    for video in tqdm(videos, desc='davis', disable=not progress):
        true = [read_labels(path) for path in video.annotations]
        features = (frame_features(source(path, '')) for path in video.frames)
        first_features = next(features)
        grid = tuple(first_features.shape[-2:])
        classes = int(true[0].max()) + 1
        first = one_hot(_labels_to_grid(true[0], grid), classes)  # every object a channel, even if tiny
        chain = propagate(first, itertools.chain([first_features], features), protocol)
        predicted = [true[0]] + [_upsampled_argmax(soft, work_hw, true[0].shape) for soft in chain]
        predictions[video.name], scores[video.name] = predicted, score_video(predicted, true)
        held[video.name] = score_video([true[0]] * len(true), true)
    return predictions, scores, held


def run_jhmdb(source: FeatureSource, videos, protocol: Propagation, progress: bool = False):
    """Predicted joints (T, J, 2) pixels per video (frame 0: the given ones)."""
    predictions = {}
    for video in tqdm(videos, desc='jhmdb', disable=not progress):
        with Image.open(video.frames[0]) as image:
            w, h = image.size
        features = (frame_features(source(path, '')) for path in video.frames)
        first_features = next(features)
        gh, gw = first_features.shape[-2:]
        to_grid = np.array([gw / w, gh / h])
        first = keypoint_maps(video.joints[0] * to_grid, gh, gw)
        joints = [video.joints[0]]
        for soft in propagate(first, itertools.chain([first_features], features), protocol):
            xy = read_keypoints(soft)
            joints.append(np.where(xy >= 0, xy / to_grid, -1.0))
        predictions[video.name] = np.stack(joints)
    return predictions


def _jf(scores: dict) -> dict:
    """J&F-Mean, J-Mean and F-Mean in % over every object of every video (the official aggregation)."""
    objects = [o for video in scores.values() for o in video.values()]
    j, f = float(np.mean([o['J'] for o in objects])), float(np.mean([o['F'] for o in objects]))
    return dict(JF=100 * (j + f) / 2, J=100 * j, F=100 * f)


def evaluate_temporal(model: str, data: str | Path, *, activations: str | Sequence = 'practical',
                      levels: Sequence[int] | None = None, pretrained: bool | str | None = None, prompt: str = '',
                      short_side: int | None = None, davis: Propagation = DAVIS_PROPAGATION,
                      jhmdb: Propagation = JHMDB_PROPAGATION, split: str = 'val', pictures: int = 2,
                      progress: bool = False, **backbone_options: Any) -> TemporalResult:
    """Video label propagation with ``model``'s activations: DAVIS-2017 J&F and/or JHMDB PCK.

    Args:
        model: Zoo name (``'sd21'``, ``'shapes_sd_tiny'``, ``'test_sd_tiny'``, ...).
        data: A DAVIS-2017 root, a JHMDB root, or the embedded set (DAVIS in it, JHMDB in its ``jhmdb/``);
            every one found is evaluated.
        activations: A preset name of the model (default ``'practical'``), a preset file, a layer id or a list.
        levels: Indices of the levels to keep; None keeps all.
        pretrained: As ``DiffusionBackbone``'s; None: the zoo's weights, random for the test models.
        prompt: The prompt every frame is encoded with (empty by default).
        short_side: The working size's short side (DAVIS) and the square's side (JHMDB); default: the
            model's image size.
        davis: DAVIS' propagation parameters (``Propagation``; DINO's by default).
        jhmdb: JHMDB's propagation parameters (VideoWalk's defaults).
        split: DAVIS' ``ImageSets/2017/<split>.txt``.
        pictures: Videos whose predictions ``TemporalResult.save`` draws (DAVIS).
        progress: Show progress bars.
        **backbone_options: ``DiffusionBackbone`` options (``t``, ``ensemble_size``, ``dtype``, ...); the working
            size is set per set as above.
    """
    start = time.time()
    found = _find(Path(data))
    side = short_side or get_model_spec(model).image_size
    if 'image_size' in backbone_options:
        raise ValueError('the working size of videos is set by short_side= (--short-side; DINO keeps the aspect '
                         'ratio), not image_size= (--image-size)')
    results: dict[str, Any] = {}
    settings = dict(model=model, data=str(data), prompt=prompt, short_side=side, split=split,
                    davis=asdict(davis), jhmdb=asdict(jhmdb), levels=None if levels is None else list(levels))
    drawn = []
    if 'davis' in found:
        videos = load_davis(found['davis'], split)
        with Image.open(videos[0].frames[0]) as image:
            work_w, work_h = davis_working_size(image.size, side)
        source = build_feature_source(model, activations, levels, pretrained, prompt, [prompt], 0,
                                      image_size=(work_h, work_w), **backbone_options)
        predictions, scores, held = run_davis(source, videos, davis, progress)
        results['davis'] = dict(videos=len(videos), objects=sum(len(v) for v in scores.values()),
                                working_size=[work_w, work_h], **_jf(scores), per_video=scores, held_still=_jf(held))
        drawn = [(v, predictions[v.name]) for v in videos[:pictures]]
        settings.update(source.settings)
    if 'jhmdb' in found:
        videos = load_jhmdb(found['jhmdb'])
        source = build_feature_source(model, activations, levels, pretrained, prompt, [prompt], 0,
                                      image_size=(side, side), **backbone_options)
        predictions = run_jhmdb(source, videos, jhmdb, progress)
        scored = pck([predictions[v.name] for v in videos], [v.joints for v in videos], PCK_THRESHOLDS)
        held = pck([np.repeat(v.joints[:1], len(v.joints), 0) for v in videos], [v.joints for v in videos],
                   PCK_THRESHOLDS)
        results['jhmdb'] = dict(videos=len(videos), working_size=[side, side],
                                **{f'PCK@{a:g}': value for a, value in scored.items()},
                                held_still={f'PCK@{a:g}': value for a, value in held.items()},
                                predicted={name: p.tolist() for name, p in predictions.items()})
        settings.update(source.settings)
    label = weights_label(model, settings.get('pretrained'))
    return TemporalResult(settings=settings, label=label, results=results, peak_rss_gb=peak_rss_gb(),
                          seconds=time.time() - start, drawn=drawn)


@dataclass
class TemporalResult:
    """What ``evaluate_temporal`` measured: ``results['davis']`` (J&F-Mean, J-Mean, F-Mean in %, per video
    and object) and ``results['jhmdb']`` (PCK@0.1, PCK@0.2 in %, predicted joints), with ``settings``. Each
    has ``held_still``: the scores of frame 0's masks / joints copied to every frame, the baseline that any
    propagation must beat on moving objects."""
    settings: dict
    label: str
    results: dict
    peak_rss_gb: float
    seconds: float
    drawn: list = field(default_factory=list, repr=False)

    def table(self) -> str:
        lines = []
        if 'davis' in self.results:
            d = self.results['davis']
            lines += [f'DAVIS-2017 label propagation ({d["videos"]} videos, {d["objects"]} objects; working size '
                      f'{d["working_size"][0]} x {d["working_size"][1]})',
                      f'{"model":<26} {"J&F-Mean":>9} {"J-Mean":>7} {"F-Mean":>7}']
            for name, row in ((self.label, d), (HELD_STILL, d['held_still'])):
                lines.append(f'{name:<26} {row["JF"]:>9.1f} {row["J"]:>7.1f} {row["F"]:>7.1f}')
        if 'jhmdb' in self.results:
            d = self.results['jhmdb']
            lines += [f'JHMDB keypoint propagation ({d["videos"]} videos; working size {d["working_size"][0]} x '
                      f'{d["working_size"][1]})', f'{"model":<26} {"PCK@0.1":>8} {"PCK@0.2":>8}']
            for name, row in ((self.label, d), (HELD_STILL, d['held_still'])):
                lines.append(f'{name:<26} {row["PCK@0.1"]:>8.1f} {row["PCK@0.2"]:>8.1f}')
        return '\n'.join(lines)

    def to_dict(self) -> dict:
        return dict(settings=self.settings, label=self.label, results=self.results, peak_rss_gb=self.peak_rss_gb,
                    seconds=self.seconds)

    def save(self, out_dir: str | Path, overwrite: bool = False) -> Path:
        """Write ``temporal.json`` and ``pictures/`` (per drawn DAVIS video: a row per frame of frame |
        truth | prediction) into ``out_dir``; an earlier run is kept unless ``overwrite``."""
        out = Path(out_dir)
        refuse_earlier_run(out / RESULT_FILE, overwrite)
        (out / 'pictures').mkdir(parents=True, exist_ok=True)
        palette = np.array(PALETTE[:3 * 16]).reshape(-1, 3)
        for video, predicted in self.drawn:
            rows = []
            for path, truth, labels in zip(video.frames, video.annotations, predicted):
                with Image.open(path) as image:
                    frame = np.asarray(image.convert('RGB'))
                rows.append(side_by_side([frame, colorize_labels(read_labels(truth), palette),
                                          colorize_labels(labels, palette)]))
            Image.fromarray(stack_rows(rows)).save(out / 'pictures' / f'{video.name}.png')
        (out / RESULT_FILE).write_text(json.dumps(self.to_dict(), indent=1, default=str))
        return out
