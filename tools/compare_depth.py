"""The depth toy's measured table: one recipe, one change at a time, the same 300 iterations.

    python tools/compare_depth.py                     # every variant, then the table (README, "Depth")
    python tools/compare_depth.py --variants vpd frozen --iters 100

The recipe is configs/depth/vpd-diffusers_shapes-sd-tiny_1xb8-300_shapes-depth-128x128.py (mmseg's VPD config,
scaled down: shapes_sd_tiny, fine-tuned at VPD's x0.01, VPD's per-image class context). Each variant
changes one thing, writes its full config to ``<work-dir>/<variant>/config.py`` and trains it with
tools/train.py; the test split's DepthMetric after the last iteration is read off the log. The constant
baseline predicts the training set's mean depth everywhere, scored by mmseg's DepthMetric the same way.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / 'configs' / 'depth' / 'vpd-diffusers_shapes-sd-tiny_1xb8-300_shapes-depth-128x128.py'
METRICS = ('d1', 'abs_rel', 'rmse')
LORA = dict(rank=8, targets=['to_q', 'to_k', 'to_v', 'to_out.0'])


def _random_weights(cfg):
    cfg.model.backbone.pretrained = False


def _frozen(cfg):
    cfg.model.backbone.denoiser = dict(trainable=False)


def _lora(cfg):
    cfg.model.backbone.denoiser = dict(trainable=False, lora=LORA)
    # the frozen denoiser's weights get no gradient, so its multiplier now reaches only the adapters:
    # 1e-4, a common LoRA rate, where VPD's x0.01 (1e-5) suits the full weights
    cfg.optim_wrapper.paramwise_cfg.custom_keys['backbone.denoiser'] = dict(lr_mult=0.1)


def _fixed_prompt(cfg):
    cfg.model.backbone.conditioning = dict(prompt='')


def _learned_tokens(cfg):
    cfg.model.backbone.conditioning = dict(type='learned', tokens=8, init='random')


# name -> (what it is, how it changes the recipe)
VARIANTS: dict[str, tuple[str, Callable | None]] = {
    'vpd': ('trained weights, fine-tuned (x0.01), VPD class context', None),
    'random-weights': ('random weights (pretrained=False), otherwise the same', _random_weights),
    'frozen': ('denoiser frozen', _frozen),
    'lora': (f'denoiser frozen + trainable LoRA (rank {LORA["rank"]}, attention projections, lr 1e-4)', _lora),
    'fixed-prompt': ("fixed prompt '' (no learned conditioning)", _fixed_prompt),
    'learned-tokens': ('8 learned context tokens (one context for every image)', _learned_tokens),
}


def train_variant(name: str, iters: int | None, work_dir: Path) -> dict[str, float]:
    from mmengine.config import Config
    cfg = Config.fromfile(TOY)
    change = VARIANTS[name][1]
    if change is not None:
        change(cfg)
    if iters is not None:
        cfg.train_cfg.max_iters = cfg.train_cfg.val_interval = cfg.default_hooks.checkpoint.interval = iters
        for scheduler in cfg.param_scheduler:  # the same shape, scaled
            scheduler.begin, scheduler.end = (round(v * iters / 300) for v in (scheduler.begin, scheduler.end))
    work_dir.mkdir(parents=True, exist_ok=True)
    cfg.dump(work_dir / 'config.py')
    log_path = work_dir / 'compare.log'
    with open(log_path, 'w') as log:
        proc = subprocess.run([sys.executable, str(REPO / 'tools' / 'train.py'), str(work_dir / 'config.py'),
                               '--work-dir', str(work_dir)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    text = log_path.read_text()
    if proc.returncode != 0:
        raise SystemExit(f'training {name} failed ({log_path}):\n{text[-3000:]}')
    lines = re.findall(r'Iter\(val\) \[\d+/\d+\]\s+(d1:.*)', text)
    if not lines:
        raise SystemExit(f'no validation depth metrics in {log_path}')
    return {k: float(v) for k, v in re.findall(r'(\w+): ([\d.]+)', lines[-1]) if k in METRICS}


def constant_baseline(data_root: Path) -> dict[str, float]:
    """mmseg's DepthMetric of predicting the training set's mean depth (valid pixels) on every test pixel."""
    import numpy as np
    import torch
    from mmseg.evaluation.metrics import DepthMetric
    from PIL import Image

    def depths(split):
        return [np.asarray(Image.open(p), dtype=np.float32) * 1e-3
                for p in sorted((data_root / 'annotations' / split).glob('*.png'))]
    train = np.concatenate([d[d > 0] for d in depths('train')])
    mean = float(train.mean())
    metric = DepthMetric(min_depth_eval=0.001, max_depth_eval=10.0)
    for gt in depths('test'):
        gt = torch.from_numpy(gt)
        metric.process({}, [dict(pred_depth_map=dict(data=torch.full_like(gt, mean)), gt_depth_map=dict(data=gt))])
    scores = metric.compute_metrics(metric.results)
    return {k: scores[k] for k in METRICS} | {'mean_depth': mean}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--variants', nargs='+', choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument('--iters', type=int, default=None, help="training iterations (default: the config's 300)")
    parser.add_argument('--work-dir', type=Path, default=Path('work_dirs/compare-depth'))
    args = parser.parse_args()

    from diffbackbones.data.depth_shapes import make_depth_dataset
    data_root = make_depth_dataset(REPO / 'data' / 'shapes-depth')
    rows = {}
    for name in args.variants:
        print(f'[compare-depth] {name}: {VARIANTS[name][0]} ...', flush=True)
        rows[name] = train_variant(name, args.iters, args.work_dir / name)
        print(f'[compare-depth] {name}: ' + '  '.join(f'{k} {v:.4f}' for k, v in rows[name].items()), flush=True)
    constant = constant_baseline(data_root)

    print(f'\n{TOY.name}: test split ({len(list((data_root / "images" / "test").glob("*.jpg")))} images), '
          f'after {args.iters or 300} iterations, seed 0')
    print('| variant | what changes | δ1 ↑ | AbsRel ↓ | RMSE (m) ↓ |')
    print('| --- | --- | --- | --- | --- |')
    for name, scores in rows.items():
        print(f'| {name} | {VARIANTS[name][0]} | {scores["d1"]:.3f} | {scores["abs_rel"]:.3f} | {scores["rmse"]:.3f} |')
    print(f'| constant | the training set\'s mean depth ({constant["mean_depth"]:.2f} m) everywhere | '
          f'{constant["d1"]:.3f} | {constant["abs_rel"]:.3f} | {constant["rmse"]:.3f} |')


if __name__ == '__main__':
    main()
