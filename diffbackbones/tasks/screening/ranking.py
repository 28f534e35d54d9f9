"""The screen's quantitative stage: each candidate activation alone feeds the probe's pixel classifier in a
fast setting; the best become a ``Preset``; optionally, how well the screening numbers predicted the probe.

The fast setting (the screen's defaults): 1 classifier, 2 epochs, 1000 sampled labelled pixels per training
image, the first 30 training and 20 test images of a labelled set in DDPM-seg's or mmseg's layout.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm import tqdm

from diffbackbones.backbone.diffusion_backbone import DiffusionBackbone
from diffbackbones.tasks.label_scarce.pixel_classifier import (PixelFeatures, clean_labels, compute_iou, find_split,
                                                               load_pair, predict, train_ensemble)
from .properties import spearman
from diffbackbones.models.zoo import ModelSpec

__all__ = ['RankingProbe', 'rank_candidates', 'build_preset', 'validate_ranking']


class RankingProbe:
    """The probe's pixel classifier in a fast setting, on the activations ``names`` of a labelled set.

    Args:
        model: Zoo name.
        names: Layer ids to hold the activations of (every candidate, and what validation compares).
        data: Labelled set root (DDPM-seg's ``real/{train,test}`` or mmseg's ``img_dir``/``ann_dir``).
        pretrained: As ``DiffusionBackbone``'s.
        backbone_options: Further ``DiffusionBackbone`` options (the screen's: t, prompt, working size).
        resolution: Side the images and labels are resized to.
        n_train: Training images used.
        n_test: Test images used.
        pixels: Labelled pixels sampled per training image.
        models: Classifiers per score.
        epochs: Their epochs.
        ignore: Ignore label.
        progress: Show progress bars.
    """

    def __init__(self, model: str, names: Sequence[str], data: str | Path, *, pretrained: bool | str = True,
                 backbone_options: dict[str, Any] | None = None, resolution: int = 128, n_train: int = 30,
                 n_test: int = 20, pixels: int = 1000, models: int = 1, epochs: int = 2, ignore: int = 255,
                 progress: bool = False):
        self.resolution, self.models, self.epochs, self.ignore, self.progress = resolution, models, epochs, ignore, progress
        published = {split: find_split(data, split)[:limit] for split, limit in (('train', n_train), ('test', n_test))}
        loaded = [load_pair(image, label, resolution) for image, label in published['train'] + published['test']]
        images, self.labels = [i for i, _ in loaded], [lbl for _, lbl in loaded]
        self.n_train = len(published['train'])
        self.n_classes = 1 + max(int(lbl[lbl != ignore].max()) for lbl in self.labels if (lbl != ignore).any())
        backbone = DiffusionBackbone(model, list(names), pretrained=pretrained,
                                     **dict(backbone_options or {}, resize_features=False))
        per_name: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        with torch.no_grad():
            for image in tqdm(images, desc='rank: features', leave=False, disable=not progress):
                for name, value in backbone.activations(image[None]).items():
                    per_name[name].append(value.float())
        self.activations = {n: torch.cat(v) for n, v in per_name.items()}
        rows, targets = [], []
        generator = torch.Generator().manual_seed(0)
        for n in range(self.n_train):
            label = clean_labels(self.labels[n], ignore)
            ys, xs = torch.nonzero(label != ignore, as_tuple=True)
            keep = torch.randperm(len(ys), generator=generator)[:pixels]
            rows.append(torch.stack([torch.full_like(ys[keep], n), ys[keep], xs[keep]], 1))
            targets.append(label[ys[keep], xs[keep]])
        self.pixels, self.targets = torch.cat(rows), torch.cat(targets)

    def miou(self, names: Sequence[str]) -> float:
        """Test mIoU (percent) of the classifiers on these activations, upsampled and concatenated."""
        features = PixelFeatures([self.activations[n] for n in names], (self.resolution, self.resolution))
        models, _ = train_ensemble(features, self.pixels, self.targets, self.n_classes,
                                   seeds=list(range(self.models)), max_epochs=self.epochs)
        preds = [predict(models, features, n) for n in range(self.n_train, len(self.labels))]
        return 100 * compute_iou(preds, self.labels[self.n_train:], self.n_classes, self.ignore)['miou']


def rank_candidates(probe: RankingProbe, candidates: Sequence[dict]) -> list[dict]:
    """Probe mIoU of each candidate alone (``miou`` added to its row), best first."""
    ranked = [dict(c, miou=probe.miou([c['name']]))
              for c in tqdm(candidates, desc='rank', unit='activation', disable=not probe.progress)]
    return sorted(ranked, key=lambda r: -r['miou'])


def build_preset(ranked: Sequence[dict], k: int = 4, per_stride: int = 2) -> list[list[str]]:
    """The best ``k`` ranked activations, at most ``per_stride`` per stride, as levels fine to coarse (each
    level in execution order)."""
    chosen, count = [], {}
    for r in ranked:
        if len(chosen) == k:
            break
        if count.get(r['stride'], 0) < per_stride:
            chosen.append(r)
            count[r['stride']] = count.get(r['stride'], 0) + 1
    by_stride = {}
    for r in sorted(chosen, key=lambda r: r['order']):
        by_stride.setdefault(r['stride'], []).append(r['name'])
    return [by_stride[s] for s in sorted(by_stride)]


def validate_ranking(probe: RankingProbe, spec: ModelSpec, ranked: Sequence[dict], levels: Sequence[Sequence[str]]
                     ) -> dict:
    """Do the screening numbers predict the probe (Spearman of DNI, GI, LI against the probe mIoU)? And the
    preset's probe mIoU against the best single activation and the model's legacy preset."""
    correlations = {m: spearman([r[m] for r in ranked], [r['miou'] for r in ranked]) for m in ('dni', 'gi', 'li')}
    choices = {'preset.json': [n for level in levels for n in level], 'best single': [ranked[0]['name']]}
    if 'legacy' in spec.presets:
        choices['legacy (upsampler outputs)'] = [n for level in spec.presets['legacy'] for n in level]
    scores = {label: probe.miou(names) for label, names in choices.items()}
    return dict(spearman=correlations, miou=scores, choices=choices)
