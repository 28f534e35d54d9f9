"""The demo: one segmentation recipe trained twice, on the shipped model's features and on random ones.

    runs = run_demo('configs/toy/upernet_shapes-sd-tiny-practical_1xb8-300_shapes-128x128.py',
                    'data/shapes', 'work_dirs/demo')
    print(comparison_table(runs))

Everything but the diffusion weights is equal: config, seeds, schedule, data. The random run is the fair
baseline: the same architecture with seeded random weights and its latents rescaled to unit variance
(``vae=dict(scale=...)``), since the trained VAE's scaling factor would leave a random VAE's latents far
below the noise at t and handicap it for a reason that is not what it knows. Each run trains with a real
mmengine Runner and is scored by mmseg's ``IoUMetric``; its val predictions are written as label PNGs,
and one picture per val image shows input | ground truth | trained | random.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ['DemoRun', 'run_demo', 'comparison_table', 'random_backbone', 'unit_variance_scale', 'draw_comparisons']

WEIGHTS = {'trained': 'trained (shipped weights)', 'random': 'random (latents rescaled)'}


@dataclass
class DemoRun:
    """One run: its weights, mmseg's val metrics, per-class IoU (%), and where its predictions are."""

    weights: str
    miou: float
    class_iou: dict[str, float] = field(default_factory=dict)
    predictions: Path | None = None


def random_backbone(config: str | Path, activations=None):
    """The config's (single-model) backbone with seeded random weights, for its latents and channels;
    ``activations`` replaces the config's."""
    from mmengine.config import Config

    from diffbackbones.backbone.diffusion_backbone import DiffusionBackbone
    settings = Config.fromfile(str(config)).model.backbone
    if settings.get('type', 'DiffusionBackbone') != 'DiffusionBackbone':
        raise ValueError(f'{Path(config).name}: random weights and other activations need a single-model '
                         f'backbone; this one is {settings.type}')
    return DiffusionBackbone(settings.model, activations or settings.activations, pretrained=False)


def unit_variance_scale(config: str | Path, data_root: str | Path, n_images: int = 32,
                        image_dir: str | Path | None = None) -> float:
    """The VAE ``scale`` that gives the config's backbone, with random weights, unit-variance latents on
    the training images (``image_dir``, by default mmseg's ``data_root/img_dir/train``): the fair random
    baseline (see the module docstring)."""
    import torch
    from PIL import Image

    from diffbackbones.backbone.diffusion_backbone import pixels_to_input
    backbone = random_backbone(config)
    folder = Path(image_dir) if image_dir is not None else Path(data_root) / 'img_dir' / 'train'
    paths = sorted(folder.glob('*.png'))[:n_images]
    if not paths:
        raise FileNotFoundError(f'no training images under {folder}: write the set first '
                                '(diffbackbones make-shapes DIR)')
    pixels = np.stack([np.asarray(Image.open(p).convert('RGB')) for p in paths])
    with torch.no_grad():
        latents = backbone.encode(pixels_to_input(pixels))
    return backbone.vae.scaling_factor / latents.float().std().item()


def _train_and_test(config: str | Path, data_root: str | Path, work_dir: Path, weights: str,
                    iters: int | None, latent_scale: float | None) -> DemoRun:
    from diffbackbones.integrations.mmseg.runtime import build_runner, load_tool_config
    options = {f'{loader}.dataset.data_root': str(data_root)
               for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')}
    options['model.backbone.pretrained'] = weights == 'trained'
    if latent_scale is not None:
        options['model.backbone.vae.scale'] = latent_scale
    if iters is not None:
        options.update({'train_cfg.max_iters': iters, 'train_cfg.val_interval': iters,
                        'default_hooks.checkpoint.interval': iters, 'param_scheduler.0.end': iters})
    predictions = work_dir / weights / 'predictions'
    options['test_evaluator.output_dir'] = str(predictions)  # mmseg's IoUMetric writes one label PNG per image
    cfg = load_tool_config(str(config), options, str(work_dir / weights), 'none')
    # mmengine keeps one visualizer per name in the process: a name per run keeps each run's logs its own
    cfg.visualizer.name = f'demo-{weights}-visualizer'
    runner = build_runner(cfg)
    runner.train()
    metrics = runner.test()
    classes = runner.test_dataloader.dataset.metainfo['classes']
    return DemoRun(weights, float(metrics['mIoU']), _class_iou(predictions, Path(data_root), classes), predictions)


def _class_iou(predictions: Path, data_root: Path, classes: Sequence[str]) -> dict[str, float]:
    """Per-class IoU (%) of the written predictions, with mmseg's own IoUMetric arithmetic."""
    import torch
    from mmseg.evaluation.metrics import IoUMetric
    from PIL import Image
    areas = []
    for truth_path in sorted((data_root / 'ann_dir' / 'val').glob('*.png')):
        pred = torch.from_numpy(np.asarray(Image.open(predictions / truth_path.name))).long()
        truth = torch.from_numpy(np.asarray(Image.open(truth_path))).long()
        areas.append(IoUMetric.intersect_and_union(pred, truth, len(classes), ignore_index=255))
    totals = [sum(a[i] for a in areas) for i in range(4)]
    iou = IoUMetric.total_area_to_metrics(*totals, metrics=['mIoU'])['IoU']
    return {name: round(float(v) * 100, 2) for name, v in zip(classes, iou)}


def draw_comparisons(runs: Sequence[DemoRun], data_root: str | Path, out: str | Path, palette: Sequence,
                     scale: int = 2) -> list[Path]:
    """One picture per val image: input | ground truth | each run's prediction, ``scale`` times larger."""
    from PIL import Image

    from diffbackbones.utils.pictures import colorize_labels, side_by_side
    out, data_root = Path(out), Path(data_root)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    titles = ['input', 'ground truth', *(run.weights for run in runs)]
    for truth_path in sorted((data_root / 'ann_dir' / 'val').glob('*.png')):
        image = np.asarray(Image.open(data_root / 'img_dir' / 'val' / truth_path.name).convert('RGB'))
        labels = [np.asarray(Image.open(truth_path))] + [np.asarray(Image.open(run.predictions / truth_path.name))
                                                         for run in runs]
        row = side_by_side([image, *(colorize_labels(m, palette) for m in labels)], titles, scale=scale)
        written.append(out / truth_path.name)
        Image.fromarray(row).save(written[-1])
    return written


def comparison_table(runs: Sequence[DemoRun]) -> str:
    """The runs as one plain-text table: val mIoU and each class's IoU, in percent."""
    classes = list(runs[0].class_iou)
    header = ['weights', 'mIoU', *classes]
    rows = [[WEIGHTS.get(r.weights, r.weights), f'{r.miou:.2f}', *(f'{r.class_iou[c]:.2f}' for c in classes)]
            for r in runs]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ['  '.join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in [header, *rows]]
    return '\n'.join([lines[0], '-' * len(lines[0]), *lines[1:]])


def run_demo(config: str | Path, data_root: str | Path, work_dir: str | Path, iters: int | None = None,
             weights: Sequence[str] = ('trained', 'random')) -> list[DemoRun]:
    """Train and test ``config`` once per entry of ``weights`` ('trained': the zoo's weights; 'random':
    seeded random weights with unit-variance latents) on ``data_root``; logs, checkpoints and val
    predictions under ``work_dir/<weights>/``."""
    unknown = [w for w in weights if w not in WEIGHTS]
    if unknown:
        raise ValueError(f'weights must be among {list(WEIGHTS)}; got {unknown}')
    work_dir = Path(work_dir)
    scale = unit_variance_scale(config, data_root) if 'random' in weights else None
    return [_train_and_test(config, data_root, work_dir, w, iters, scale if w == 'random' else None)
            for w in weights]
