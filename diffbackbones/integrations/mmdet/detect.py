"""``make detect``: one detection recipe trained twice, on the shipped model's features and on random ones,
through MMDetection's own ``tools/train.py`` and ``tools/test.py``.

    runs = run_detect('configs/toy/mask-rcnn_shapes-sd-tiny-practical_1xb8-300_shapes-instances-128x128.py',
                      'data/shapes-instances', 'work_dirs/detect')
    print(detection_table(runs))

As in the segmentation demo (``diffbackbones.integrations.mmseg.demo``), everything but the diffusion weights is
equal, and the random run is the fair baseline: seeded random weights with latents rescaled to unit variance.
Each run is a subprocess of mmdet's own tools, as a user would type it; the scores are mmdet's ``CocoMetric``
(pycocotools' COCO evaluation: bbox and segm mAP), read from the test run's metrics file, and its pictures are
mmdet's own (``--show-dir``: ground truth beside the predicted boxes and masks).
"""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

__all__ = ['DetectRun', 'run_detect', 'detection_table', 'mmdet_tools', 'WEIGHTS', 'METRICS']

WEIGHTS = {'trained': 'trained (shipped weights)', 'random': 'random (latents rescaled)'}
METRICS = {'bbox_mAP': 'bbox mAP', 'bbox_mAP_50': 'bbox AP50', 'segm_mAP': 'segm mAP', 'segm_mAP_50': 'segm AP50'}


@dataclass
class DetectRun:
    """One run: its weights, mmdet's COCO metrics (fractions, as CocoMetric reports them), its pictures."""
    weights: str
    metrics: dict
    pictures: Path | None = None


def mmdet_tools() -> Path:
    """The folder of mmdet's own train.py and test.py (shipped inside the installed package)."""
    import mmdet
    return Path(mmdet.__file__).parent / '.mim' / 'tools'


def _data_options(data_root: Path) -> list[str]:
    options = [f'{loader}.dataset.data_root={data_root}' for loader in ('train_dataloader', 'val_dataloader',
                                                                       'test_dataloader')]
    return options + [f'{evaluator}.ann_file={data_root / "annotations" / "instances_val.json"}'
                      for evaluator in ('val_evaluator', 'test_evaluator')]


def _tool(script: str, arguments: Sequence[str], log: Path) -> None:
    with open(log, 'w') as out:
        done = subprocess.run([sys.executable, str(mmdet_tools() / script), *arguments], stdout=out,
                              stderr=subprocess.STDOUT)
    if done.returncode:
        tail = ''.join(log.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f'mmdet {script} failed (exit {done.returncode}); its log: {log}\n{tail}')


def _test_metrics(test_dir: Path) -> dict:
    """The metrics mmengine writes for a test run: the last ``<timestamp>/<timestamp>.json`` under it."""
    files = sorted(test_dir.glob('*/*.json'))
    if not files:
        raise FileNotFoundError(f'no metrics file under {test_dir} (mmdet test.py writes <timestamp>/<timestamp>.json)')
    record = json.loads(files[-1].read_text().splitlines()[-1])
    return {key.split('/', 1)[1]: value for key, value in record.items() if key.startswith('coco/')}


def _train_and_test(config: Path, data_root: Path, work_dir: Path, weights: str, iters: int | None,
                    latent_scale: float | None, progress: bool, options: Sequence[str] = ()) -> DetectRun:
    options = _data_options(data_root) + list(options)
    if weights == 'random':
        options += ['model.backbone.pretrained=False', f'model.backbone.vae.scale={latent_scale}']
    if iters is not None:
        options += [f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
                    f'default_hooks.checkpoint.interval={iters}']
    work_dir.mkdir(parents=True, exist_ok=True)
    if progress:
        print(f'{WEIGHTS[weights]}: mmdet tools/train.py (log {work_dir / "train.log"})', flush=True)
    _tool('train.py', [str(config), '--work-dir', str(work_dir), '--cfg-options', *options], work_dir / 'train.log')
    checkpoint = Path((work_dir / 'last_checkpoint').read_text().strip())
    if progress:
        print(f'{WEIGHTS[weights]}: mmdet tools/test.py {checkpoint.name} (log {work_dir / "test.log"})', flush=True)
    test_dir = work_dir / 'test'
    _tool('test.py', [str(config), str(checkpoint), '--work-dir', str(test_dir), '--show-dir', 'pictures',
                      '--cfg-options', *options], work_dir / 'test.log')
    pictures = sorted(test_dir.glob('*/pictures'))
    return DetectRun(weights, _test_metrics(test_dir), pictures[-1] if pictures else None)


def run_detect(config: str | Path, data_root: str | Path, work_dir: str | Path, iters: int | None = None,
               weights: Sequence[str] = tuple(WEIGHTS), options: Sequence[str] = (),
               progress: bool = False) -> list[DetectRun]:
    """Write the instances set (when ``data_root`` has none), then train and test ``config`` with the shipped weights and with
    random ones (latents rescaled to unit variance) through mmdet's own tools.

    ``iters`` shortens training; ``weights`` picks the runs (``'trained'``, ``'random'``); ``options`` are more
    ``--cfg-options`` for both tools (``KEY=VALUE``).
    """
    unknown = set(weights) - set(WEIGHTS)
    if unknown:
        raise ValueError(f'weights must be among {sorted(WEIGHTS)}; got {sorted(unknown)}')
    from diffbackbones.data.shapes_instances import make_instances_dataset
    from diffbackbones.integrations.mmseg.demo import unit_variance_scale
    config, data_root, work_dir = Path(config).resolve(), Path(data_root).resolve(), Path(work_dir)
    if not (data_root / 'annotations' / 'instances_val.json').is_file():   # a set already there is used as it is
        make_instances_dataset(data_root)
    scale = unit_variance_scale(config, data_root, image_dir=data_root / 'train')
    return [_train_and_test(config, data_root, work_dir / name, name, iters, scale, progress, options)
            for name in weights]


def detection_table(runs: Sequence[DetectRun]) -> str:
    """The runs' COCO metrics (in %) as a markdown table."""
    lines = ['| weights | ' + ' | '.join(METRICS.values()) + ' |', '| --- |' + ' --- |' * len(METRICS)]
    for run in runs:
        lines.append(f'| {WEIGHTS[run.weights]} | ' + ' | '.join(f'{100 * run.metrics.get(key, float("nan")):.1f}'
                                                                 for key in METRICS) + ' |')
    return '\n'.join(lines)
