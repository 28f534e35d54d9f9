"""The paper's method as one call: ``screen`` every activation of a model by its three properties, then
``ScreenReport.rank`` the survivors into a ``Preset``.

Qualitative stage: for ``n_images`` images under ``seeds`` noise seeds at the same t, every activation in
the catalog (``kinds``/``levels`` filter it) gets DNI (diffusion noise), DNI below and above a quarter of
Nyquist, GI (granularity, cycles per image) and, with label maps, LI (locality); see ``properties.py`` for
the exact definitions. All activations of a forward are reduced to these numbers as they are computed
(never held together). The paper's rules, made numeric (``properties.select_candidates``), keep the
candidates.

Quantitative stage (``ScreenReport.rank``, ``ranking.py``): each candidate alone feeds the probe's pixel
classifier in a fast setting; the best ``k``, at most ``per_stride`` per stride, become the preset.
"""
from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from tqdm import tqdm

from diffbackbones.backbone.diffusion_backbone import DiffusionBackbone
from diffbackbones.backbone.denoiser.capture import ActivationCapture
from diffbackbones.models.catalog import list_activations
from diffbackbones.utils.images import image_files, read_image
from diffbackbones.models.loading import build_denoiser
from diffbackbones.backbone.presets import Preset
from diffbackbones.tasks.label_scarce.pixel_classifier import label_map_of, read_label_map
from .ranking import RankingProbe, build_preset, rank_candidates, validate_ranking
from .properties import ActivationStats, screen_samples, select_candidates
from diffbackbones.backbone.stages import set_default_option
from diffbackbones.utils.outputs import refuse_earlier_run
from diffbackbones.models.zoo import default_weights, get_model_spec

__all__ = ['screen', 'ScreenReport']

CSV_FIELDS = ['name', 'kind', 'level', 'stride', 'channels', 'order', 'dni', 'dni_low', 'dni_high', 'gi', 'li',
              'keep', 'reason']
# The three properties as plotted (screen.png, tools/screen_figure.py): column, axis label.
METRICS = (('dni', 'DNI (noise)'), ('gi', 'GI (cycles / image)'), ('li', 'LI (locality)'))


def screen(model: str, images: str | Path | Sequence[str | Path], labels: str | Path | None = None, *,
           pretrained: bool | str | None = None, n_images: int = 16, seeds: int = 4, kinds: Sequence[str] | None = None,
           levels: Sequence[str] | None = None, dni_max: float = 0.5, li_max: float = 0.05, ignore: int = 255,
           progress: bool = False, **backbone_options: Any) -> 'ScreenReport':
    """Screen every activation of ``model`` by DNI, GI and LI, and keep the candidates by the paper's rules.

    Args:
        model: Zoo name (``'sd15'``, ``'shapes_sd_tiny'``, ``'test_sd_tiny'``, ...).
        images: An image folder, or a list of image paths; the first ``n_images`` are used.
        labels: A folder of label maps (``STEM.npy`` or ``STEM.png``; may be the image folder itself, as in
            DDPM-seg's layout) for LI; None skips LI.
        pretrained: None (the zoo's weights; random for the test models), True, False (random) or a folder,
            as ``DiffusionBackbone``'s.
        n_images: Images screened.
        seeds: Noise seeds per image (at least 2: noise is measured across seeds).
        kinds: Only these kinds (``'res-out'``, ``'self-k'``, ...); None: all.
        levels: Only ids starting with these prefixes (``'up-level1'``, ...); None: all.
        dni_max: Activations noisier than this are dropped, unless LI above ``li_max`` shows locality.
        li_max: The LI above which q/k are dropped where a clean activation exists at the same stride.
        ignore: Ignore label of the label maps.
        progress: Show progress bars (nothing is printed otherwise).
        **backbone_options: Further ``DiffusionBackbone`` options: ``t``/``noise=dict(t=...)``, ``prompt``,
            ``image_size`` (default: the model's own size), ...

    Returns:
        A ``ScreenReport``: ``.rows``, ``.candidates()``, ``.rank(data)``, ``.plot(path)``, ``.save(folder)``.
    """
    spec = get_model_spec(model)
    pretrained = default_weights(spec, pretrained)
    paths = image_files(images, n_images)
    if not (isinstance(seeds, int) and seeds >= 2):
        raise ValueError(f'seeds must be at least 2: noise is measured across seeds; got {seeds!r}')
    options = dict(backbone_options)
    set_default_option(options, 'image_size', spec.image_size)
    # any activation builds the backbone; unpruned, every activation stays reachable
    any_activation = ('practical' if 'practical' in spec.presets else next(iter(spec.presets), None)
                      or [list_activations(build_denoiser(spec, 'meta'))[-1].name])
    backbone = DiffusionBackbone(model, any_activation, pretrained=pretrained, ensemble_size=seeds, prune=False,
                                 **options)
    points = _filter_points(backbone.points, kinds, levels)
    stats = _screen_images(backbone, [p.name for p in points], paths, None if labels is None else Path(labels),
                           ignore, progress)
    rows = []
    for p in points:
        s = stats[p.name]
        level = re.match(r'(down|up)-level\d+|mid', p.name)
        rows.append(dict(name=p.name, kind=p.kind, level=level.group(0) if level else '',
                         stride=backbone.stride_of[p.name], channels=p.channels, order=p.order,
                         dni=s.mean('dni'), dni_low=s.mean('dni_low'), dni_high=s.mean('dni_high'), gi=s.mean('gi'),
                         li=s.mean('li')))
    return ScreenReport(model=model, t=backbone.stages.noise.t, pretrained=pretrained, backbone_options=options,
                        images=[str(p) for p in paths], seeds=seeds, thresholds=dict(dni_max=dni_max, li_max=li_max),
                        rows=select_candidates(rows, dni_max, li_max),
                        pca={name: s.pca for name, s in stats.items()})


def _filter_points(points, kinds, levels):
    points = list(points)
    if kinds:
        unknown = set(kinds) - {p.kind for p in points}
        if unknown:
            raise ValueError(f'kinds {sorted(unknown)} not in this model; kinds: {sorted({p.kind for p in points})}')
        points = [p for p in points if p.kind in set(kinds)]
    if levels:
        points = [p for p in points if p.name.startswith(tuple(levels))]
    if not points:
        raise ValueError('the kinds/levels filters leave no activation to screen')
    return points


def _screen_images(backbone: DiffusionBackbone, names: list[str], paths: list[Path], labels: Path | None,
                   ignore: int, progress: bool) -> dict[str, ActivationStats]:
    """Every named activation of every image under the backbone's noise seeds, reduced as it is computed."""
    stats = {name: ActivationStats() for name in names}
    for n, path in enumerate(tqdm(paths, desc='screen', unit='img', disable=not progress)):
        pixels = read_image(path)
        label = None if labels is None else torch.from_numpy(
            read_label_map(label_map_of(path, labels)).astype(np.int64))
        if label is not None and tuple(label.shape) != tuple(pixels.shape[1:]):
            raise ValueError(f'label map of {path} is {tuple(label.shape)}, the image {tuple(pixels.shape[1:])}')
        image, work = backbone.working_input(pixels[None])
        labels_on = {}  # grid -> the label map resized to it (nearest), once per grid

        def reduce(name, value):
            grid = backbone.grid_of(name, work)
            if label is not None and grid not in labels_on:
                labels_on[grid] = F.interpolate(label[None, None].float(), size=grid, mode='nearest')[0, 0].long()
            return screen_samples(value[..., :grid[0], :grid[1]].float(), labels_on.get(grid), ignore, with_pca=n == 0)
        with torch.no_grad():
            cap = ActivationCapture(backbone.denoiser, names, stop_early=True, detach=True, catalog=backbone.points,
                                    reduce=reduce)
            backbone.control.follow(cap)  # a ControlNet (control=) runs if any screened activation sees its residuals
            kwargs = backbone.control(backbone.denoiser_inputs(backbone.encode(image), work), image)  # a row per seed
            with cap:
                backbone.denoiser(**kwargs)
        for name, numbers in cap.activations.items():
            stats[name].add(numbers)
    return stats


@dataclass
class ScreenReport:
    """What ``screen`` found: one row per activation (its numbers, ``keep`` and the rule's ``reason``).

    After ``rank``: ``ranked`` (the candidates with their probe mIoU, best first), ``preset`` and, when
    validated, ``validation``.
    """

    model: str
    t: int | Sequence[int]
    pretrained: bool | str
    backbone_options: dict
    images: list[str]
    seeds: int
    thresholds: dict
    rows: list[dict]
    pca: dict = field(default_factory=dict, repr=False)
    ranked: list[dict] | None = None
    preset: Preset | None = None
    validation: dict | None = None

    def candidates(self) -> list[dict]:
        """The rows the rules keep, in execution order."""
        return [r for r in self.rows if r['keep']]

    def rank(self, data: str | Path, *, k: int = 4, per_stride: int = 2, validate: bool = False, models: int = 1,
             epochs: int = 2, resolution: int = 128, n_train: int = 30, n_test: int = 20, pixels: int = 1000,
             ignore: int = 255, progress: bool = False) -> Preset:
        """Rank the candidates by the probe's fast setting on the labelled set ``data`` and build the preset.

        Args:
            data: Labelled set root (DDPM-seg's ``real/{train,test}`` or mmseg's ``img_dir``/``ann_dir``).
            k: Activations in the preset.
            per_stride: At most this many per stride.
            validate: Also measure the Spearman correlation of DNI/GI/LI with the probe mIoU, and the preset's
                probe mIoU against the best single activation and the model's legacy preset.
            models: Classifiers per score (the probe's fast setting, ``RankingProbe``).
            epochs: Their epochs.
            resolution: Side the images and labels are resized to.
            n_train: Training images used.
            n_test: Test images used.
            pixels: Labelled pixels sampled per training image.
            ignore: Ignore label.
            progress: Show progress bars.

        Returns:
            The ``Preset`` (its ``info`` holds ``t`` and the ranking); also kept as ``self.preset``.
        """
        candidates = self.candidates()
        if not candidates:
            raise ValueError('no candidate survives the rules: relax dni_max / li_max to rank some')
        spec = get_model_spec(self.model)
        names = [c['name'] for c in candidates]
        if validate and 'legacy' in spec.presets:
            names += [n for level in spec.presets['legacy'] for n in level if n not in names]
        probe = RankingProbe(self.model, names, data, pretrained=self.pretrained, backbone_options=self.backbone_options,
                             resolution=resolution, n_train=n_train, n_test=n_test, pixels=pixels, models=models,
                             epochs=epochs, ignore=ignore, progress=progress)
        self.ranked = rank_candidates(probe, candidates)
        levels = build_preset(self.ranked, k, per_stride)
        ranking = [{key: r[key] for key in ('name', 'stride', 'miou', 'dni', 'gi', 'li')} for r in self.ranked]
        self.preset = Preset(self.model, levels, dict(t=self.t, ranking=ranking))
        self.validation = validate_ranking(probe, spec, self.ranked, levels) if validate else None
        return self.preset

    def plot(self, path: str | Path) -> Path:
        """DNI, GI and LI along the execution order, coloured by kind, stride changes marked (a PNG)."""
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        rows, path = self.rows, Path(path)
        kinds = sorted({r['kind'] for r in rows})
        colours = {k: plt.get_cmap('tab20')(i % 20) for i, k in enumerate(kinds)}
        fig, axes = plt.subplots(len(METRICS), 1, figsize=(max(10, len(rows) / 12), 9), sharex=True)
        order = [r['order'] for r in rows]
        boundaries = [(a['order'] + b['order']) / 2 for a, b in zip(rows, rows[1:]) if a['stride'] != b['stride']]
        for ax, (metric, label) in zip(axes, METRICS):
            for kind in kinds:
                sel = [r for r in rows if r['kind'] == kind]
                ax.scatter([r['order'] for r in sel], [r[metric] for r in sel], s=14, color=colours[kind], label=kind)
            for x in boundaries:
                ax.axvline(x, color='grey', linestyle='--', linewidth=0.6)
            ax.set_ylabel(label)
        axes[0].set_title(f'{self.model}: {len(self.images)} images x {self.seeds} seeds, t={self.t}')
        axes[-1].set_xlabel('execution order (dashed: stride changes)')
        axes[-1].set_xlim(min(order) - 1, max(order) + 1)
        axes[0].legend(ncol=min(6, len(kinds)), fontsize=7, loc='upper left', bbox_to_anchor=(0, 1.35))
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path

    def contact_sheet(self, path: str | Path, tile: int = 96) -> Path:
        """The first three principal components of every activation as RGB, first image (a PNG)."""
        rows, path = self.rows, Path(path)
        cols = max(1, min(12, math.ceil(math.sqrt(len(rows)))))
        sheet = Image.new('RGB', (cols * tile, math.ceil(len(rows) / cols) * (tile + 12)), (255, 255, 255))
        pen = ImageDraw.Draw(sheet)
        for i, row in enumerate(rows):
            rgb = self.pca.get(row['name'])
            x, y = (i % cols) * tile, (i // cols) * (tile + 12)
            if rgb is not None:
                sheet.paste(Image.fromarray(rgb).resize((tile - 4, tile - 4), Image.NEAREST), (x + 2, y + 2))
            short = row['name'].replace('-repeat', '-r').replace('-vit-block', '-b').replace('level', 'l')
            pen.text((x + 2, y + tile - 2), short[-20:], fill=(0, 0, 0))
        sheet.save(path)
        return path

    def save(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Write ``screen.csv``, ``screen.png``, ``pca.png``, ``candidates.json`` and, once ranked,
        ``preset.json`` (and ``validation.json``). An earlier screen in ``folder`` is kept unless ``overwrite``."""
        out = Path(folder)
        check_free(out, overwrite)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / 'screen.csv', 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            writer.writeheader()
            for r in self.rows:
                writer.writerow({k: (f'{r[k]:.4f}' if isinstance(r[k], float) else r[k]) for k in CSV_FIELDS})
        self.plot(out / 'screen.png')
        self.contact_sheet(out / 'pca.png')
        (out / 'candidates.json').write_text(json.dumps(dict(
            model=self.model, t=self.t, thresholds=self.thresholds,
            candidates=[r['name'] for r in self.candidates()], screened=self.rows), indent=1))
        if self.preset is not None:
            self.preset.save(out / 'preset.json')
        if self.validation is not None:
            (out / 'validation.json').write_text(json.dumps(self.validation, indent=1))
        return out

    def to_dict(self) -> dict:
        """rows, candidates and, once ranked, ranked, preset (as saved) and validation."""
        report = dict(rows=self.rows, candidates=self.candidates())
        if self.preset is not None:
            report.update(ranked=self.ranked, preset=dict(model=self.model, levels=[list(lv) for lv in self.preset.levels],
                                                          **self.preset.info))
        if self.validation is not None:
            report.update(validation=self.validation)
        return report


def check_free(folder: str | Path, overwrite: bool) -> None:
    """Refuse to write over an earlier screen unless asked to."""
    refuse_earlier_run(Path(folder) / 'screen.csv', overwrite, 'screen')
