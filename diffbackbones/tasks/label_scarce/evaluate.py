"""Label-scarce segmentation as one call: DDPM-seg's pixel-classifier protocol (Baranchuk et al. 2022)
on a diffusion backbone, as the paper's code runs it (Meng et al. 2024, Table 2).

    result = evaluate_probe('test_sd_tiny', 'data/shapes-ddpm')   # a ProbeResult
    print(result.table())
    result.save('work_dirs/probe')                                 # probe.json, pictures/

Images are resized to ``resolution`` (256), scaled to [-1, 1]; the backbone runs at its working size (the
model's own unless ``image_size`` is given) and its levels, kept on that grid, are upsampled bilinearly to
the label resolution per sampled pixel (never as whole maps). An ensemble of ``models`` (10) MLPs is
trained on the labelled training pixels (classes of 1-19 pixels in an image are ignored), Adam 1e-3,
batches of 64, at most 100 epochs with the original's early stop; each predicts by argmax, the ensemble
by majority vote; mIoU over all classes but the ignore label, absent classes counting 0 (also over the
present classes). ``splits > 1`` pools train and test and redraws splits of the same sizes (seeds
``seed + k``), reporting mean +- std. The building blocks are in ``diffbackbones.tasks.label_scarce.pixel_classifier``.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from diffbackbones.backbone.diffusion_backbone import DiffusionBackbone
from diffbackbones.backbone.presets import ActivationsArg
from .pixel_classifier import (PixelFeatures, clean_labels, compute_iou, extract_levels, find_split, load_pair, predict,
                               redraw_split, train_ensemble)
from diffbackbones.backbone.stages import set_default_option
from diffbackbones.utils.outputs import peak_rss_gb, refuse_earlier_run
from diffbackbones.models.zoo import default_weights, get_model_spec

__all__ = ['evaluate_probe', 'ProbeResult', 'ProbePicture']


@dataclass
class ProbePicture:
    """One test image of split 1, as ``ProbeResult.save`` draws it (image | labels | prediction).

    Attributes:
        name: The picture's file name, ``FOLDER-STEM.png`` of the image file.
        image: (3, R, R) float image in [-1, 1].
        label: (R, R) int64 label map.
        pred: (R, R) int64 ensemble prediction.
    """

    name: str
    image: torch.Tensor = field(repr=False)
    label: torch.Tensor = field(repr=False)
    pred: torch.Tensor = field(repr=False)


@dataclass
class ProbeResult:
    """What ``evaluate_probe`` measured.

    Attributes:
        settings: The run's settings: the call's arguments, the backbone's resolved timestep, ``levels``
            (activation ids per level), ``channels`` (per level) and ``n_classes``.
        splits: One dict per split: ``seed``, ``train`` and ``test`` (image paths), ``classifiers`` (each
            classifier's epochs, iterations, early stop, best loss), ``miou``, ``miou_present``, ``iou``,
            ``intersection``, ``union`` (per class; IoUs as fractions).
        miou_mean: Mean test mIoU over the splits, in percent.
        miou_std: Its sample standard deviation (0 for one split).
        miou_present_mean: Mean mIoU over the classes present, in percent.
        peak_rss_gb: Peak resident memory of the process, GB.
        seconds: Time the evaluation took.
        features: The pixel features: ``channels`` per pixel, ``level_shapes`` (C, h, w) as kept,
            ``nbytes`` held, ``upsampled_nbytes`` (what upsampling every image in full would take, fp32).
        pictures: Split 1's test images with their labels and predictions, in test order.
    """

    settings: dict
    splits: list[dict]
    miou_mean: float
    miou_std: float
    miou_present_mean: float
    peak_rss_gb: float
    seconds: float
    features: dict = field(default_factory=dict)
    pictures: list[ProbePicture] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        """The report as ``probe.json`` holds it: settings, splits, the summary, peak memory and time."""
        return dict(settings=self.settings, splits=self.splits, miou_mean=self.miou_mean, miou_std=self.miou_std,
                    miou_present_mean=self.miou_present_mean, peak_rss_gb=self.peak_rss_gb, seconds=self.seconds)

    def table(self) -> str:
        """Per-class test IoU (percent), one column per split, and the mIoU of each split."""
        lines = [f'{"class":>10} ' + ' '.join(f'{f"split {k + 1}":>8}' for k in range(len(self.splits)))]
        for c in self.splits[0]['iou']:
            lines.append(f'{c:>10} ' + ' '.join(f'{100 * r["iou"][c]:8.2f}' for r in self.splits))
        lines.append(f'{"mIoU":>10} ' + ' '.join(f'{100 * r["miou"]:8.2f}' for r in self.splits))
        return '\n'.join(lines)

    def save(self, out_dir: str | Path, pictures: int = 8, overwrite: bool = False) -> Path:
        """Write ``probe.json`` (``to_dict()``) and ``pictures/``: the first ``pictures`` test images of
        split 1, each as image | labels | prediction.

        Args:
            out_dir: The folder (created if missing).
            pictures: Test images drawn.
            overwrite: Replace an earlier run's ``probe.json``; without it, an earlier run is kept.

        Returns:
            ``out_dir`` as a Path.

        Raises:
            FileExistsError: ``out_dir`` holds an earlier run's ``probe.json`` and ``overwrite`` is False.
        """
        out = Path(out_dir)
        check_free(out, overwrite)
        folder = out / 'pictures'
        folder.mkdir(parents=True, exist_ok=True)
        n_classes, ignore = self.settings['n_classes'], self.settings['ignore']
        for picture in self.pictures[:pictures]:
            draw(folder / picture.name, picture.image, picture.label, picture.pred, n_classes, ignore)
        (out / 'probe.json').write_text(json.dumps(self.to_dict(), indent=1, default=str))
        return out


def check_free(out_dir: str | Path, overwrite: bool) -> None:
    """Refuse to write over an earlier run's ``probe.json`` unless asked to (``FileExistsError``)."""
    refuse_earlier_run(Path(out_dir) / 'probe.json', overwrite)


def palette(n: int) -> np.ndarray:
    """(max(n, 1), 3) uint8 class colours: fixed random colours, class 0 black."""
    rng = np.random.default_rng(0)
    colours = rng.integers(40, 256, (max(n, 1), 3)).astype(np.uint8)
    colours[0] = 0
    return colours


def draw(path: Path, image: torch.Tensor, label: torch.Tensor, pred: torch.Tensor, n_classes: int,
         ignore: int) -> None:
    """Save image | labels | prediction side by side as one PNG (the ignore label white)."""
    colours = palette(n_classes)

    def colourise(m: torch.Tensor) -> np.ndarray:
        m = m.numpy()
        out = colours[np.clip(m, 0, n_classes - 1)]
        out[m == ignore] = 255
        return out
    rgb = ((image.permute(1, 2, 0) + 1) * 127.5).clamp(0, 255).byte().numpy()
    Image.fromarray(np.concatenate([rgb, colourise(label), colourise(pred)], axis=1)).save(path)


def evaluate_probe(model: str, data: str | Path, *, activations: ActivationsArg = 'practical',
                   pretrained: bool | str | None = None, splits: int = 1, seed: int = 0, resolution: int = 256,
                   models: int = 10, max_epochs: int = 100, batch_size: int = 64, ignore: int = 255,
                   num_classes: int | None = None, progress: bool = False, **backbone_options: Any) -> ProbeResult:
    """Evaluate ``model``'s activations by DDPM-seg's label-scarce segmentation protocol on ``data``.

    Args:
        model: Zoo name (``'sd15'``, ``'sdxl'``, ``'shapes_sd_tiny'``, ``'test_sd_tiny'``, ...).
        data: Dataset root: DDPM-seg's ``ROOT/real/{train,test}/`` (square images with same-name ``.npy``
            label maps) or mmseg's ``img_dir/``/``ann_dir/`` (``val`` serves as test).
        activations: Preset name, preset file, ``Preset`` or layer ids, as ``DiffusionBackbone``'s.
        pretrained: None (the zoo's weights; random for the test models), True, False (random) or a local
            diffusers folder, as ``DiffusionBackbone``'s.
        splits: 1: the published split; k > 1: k splits redrawn from train + test, of the same sizes.
        seed: Seed of the first split (split k uses ``seed + k``; its classifiers ``(seed + k) * 1000 + m``).
        resolution: Label resolution: images and labels are resized to it, features upsampled to it.
        models: Classifiers in the ensemble.
        max_epochs: Most epochs a classifier trains (the early stop usually ends it sooner).
        batch_size: Pixels per classifier batch.
        ignore: Ignore label (DDPM-seg's Bedroom-28: 0).
        num_classes: Classes; None: the largest label id (but the ignore label) + 1.
        progress: Show tqdm progress bars (nothing is printed otherwise).
        **backbone_options: Further ``DiffusionBackbone`` options: ``t``, ``prompt``, ``dtype``,
            ``image_size`` (default: the model's own working size), stage dicts such as ``noise=dict(t=50)``.
            ``resize_features`` defaults to False: the levels stay on the working grid.

    Returns:
        A ``ProbeResult``: per-split IoUs, the mean and std of the mIoU, ``table()``, ``save(folder)``.

    Raises:
        ValueError: An unknown model, bad settings, or a label map that does not match its image.
        FileNotFoundError: A missing split, image or label map.
    """
    start = time.time()
    for name, value in dict(splits=splits, resolution=resolution, models=models, max_epochs=max_epochs,
                            batch_size=batch_size).items():
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f'{name} must be a positive integer; got {value!r}')
    spec = get_model_spec(model)
    pretrained = default_weights(spec, pretrained)
    options = dict(backbone_options)
    set_default_option(options, 'image_size', spec.image_size)
    set_default_option(options, 'resize_features', False)

    published = {split: find_split(data, split) for split in ('train', 'test')}
    pairs = published['train'] + published['test']
    loaded = [load_pair(image, label, resolution)
              for image, label in tqdm(pairs, desc='load', leave=False, disable=not progress)]
    images = [image for image, _ in loaded]
    labels = [label for _, label in loaded]
    n_classes = _n_classes(pairs, labels, ignore, num_classes)

    with contextlib.nullcontext() if progress else _quiet_loading():
        backbone = DiffusionBackbone(model, activations, pretrained=pretrained, **options)
    settings = dict(model=model, activations=activations, data=str(data), pretrained=pretrained,
                    backbone_options=options, t=backbone.stages.noise.t, resolution=resolution, models=models,
                    max_epochs=max_epochs, batch_size=batch_size, ignore=ignore, num_classes=num_classes,
                    splits=splits, seed=seed, levels=[list(level) for level in backbone.levels],
                    channels=[i['num_chs'] for i in backbone.feature_info], n_classes=n_classes)
    levels = extract_levels(backbone, images,
                            progress=(lambda r: tqdm(r, desc='features', leave=False)) if progress else None)
    del backbone  # the classifiers need only the features
    features = PixelFeatures(levels, (resolution, resolution))
    feature_info = dict(channels=features.channels, level_shapes=[tuple(level.shape[1:]) for level in levels],
                        nbytes=features.nbytes, upsampled_nbytes=len(images) * resolution ** 2 * features.channels * 4)
    n_train = len(published['train'])

    results, pictures = [], []
    for k in range(splits):
        split_seed = seed + k
        train_ids, test_ids = (list(range(n_train)), list(range(n_train, len(pairs)))) if splits == 1 \
            else redraw_split(n_train, len(pairs) - n_train, split_seed)
        rows = []
        for n in train_ids:
            label = clean_labels(labels[n], ignore)
            ys, xs = torch.nonzero(label != ignore, as_tuple=True)
            rows.append((torch.stack([torch.full_like(ys, n), ys, xs], 1), label[ys, xs]))
        pixels, targets = torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])
        bar = (lambda total, k=k: tqdm(total=total, desc=f'split {k + 1}/{splits}: {models} classifiers',
                                       leave=False)) if progress else None
        classifiers, logs = train_ensemble(features, pixels, targets, n_classes,
                                           seeds=[split_seed * 1000 + m for m in range(models)],
                                           max_epochs=max_epochs, batch_size=batch_size, progress=bar)
        preds = [predict(classifiers, features, n)
                 for n in tqdm(test_ids, desc='predict', leave=False, disable=not progress)]
        iou = compute_iou(preds, [labels[n] for n in test_ids], n_classes, ignore)
        if k == 0:
            pictures = [ProbePicture(f'{pairs[n][0].parent.name}-{pairs[n][0].stem}.png', images[n], labels[n], pred)
                        for n, pred in zip(test_ids, preds)]
        results.append(dict(seed=split_seed, train=[str(pairs[n][0]) for n in train_ids],
                            test=[str(pairs[n][0]) for n in test_ids], classifiers=logs, **iou))

    mious = [100 * r['miou'] for r in results]
    return ProbeResult(settings=settings, splits=results, miou_mean=statistics.mean(mious),
                       miou_std=statistics.stdev(mious) if len(mious) > 1 else 0.0,
                       miou_present_mean=statistics.mean(100 * r['miou_present'] for r in results),
                       peak_rss_gb=peak_rss_gb(),
                       seconds=time.time() - start, features=feature_info, pictures=pictures)


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """Without ``progress``: no weight-loading bars from diffusers/transformers either (restored after)."""
    enabled = []
    for name in ('diffusers.utils.logging', 'transformers.utils.logging'):
        try:
            logging = importlib.import_module(name)
        except ImportError:
            continue
        if logging.is_progress_bar_enabled():
            logging.disable_progress_bar()
            enabled.append(logging)
    try:
        yield
    finally:
        for logging in enabled:
            logging.enable_progress_bar()


def _n_classes(pairs: list[tuple[Path, Path]], labels: list[torch.Tensor], ignore: int,
               num_classes: int | None) -> int:
    """``num_classes``, or the largest label id but ``ignore`` + 1; a label beyond it names its file."""
    largest = [(int(lbl[lbl != ignore].max()), path) for (_, path), lbl in zip(pairs, labels) if (lbl != ignore).any()]
    if not largest:
        raise ValueError(f'every label map holds only the ignore label {ignore}: nothing to train on or score')
    top, path = max(largest, key=lambda item: item[0])
    if num_classes is None:
        return top + 1
    if top >= num_classes:
        raise ValueError(f'{path} holds class id {top}, beyond num_classes={num_classes} (ids 0..{num_classes - 1}, '
                         f'ignore label {ignore}).')
    return num_classes
