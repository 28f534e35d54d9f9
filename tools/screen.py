"""Screen every activation of a diffusion model by the paper's three properties; rank the survivors.

    python tools/screen.py test_sd_tiny --images data/shapes/img_dir/val --labels data/shapes/ann_dir/val --out work_dirs/screen
    python tools/screen.py shapes_sd_tiny --images ... --labels ... --rank data/shapes-ddpm --out work_dirs/screen

Qualitative stage: for ``--n-images`` images (16) under ``--seeds`` noise seeds (4) at the same t, every
activation in the catalog (``--kinds``/``--levels`` filter it) gets DNI (diffusion noise), DNI below and
above a quarter of Nyquist, GI (granularity, cycles per image) and, with label maps, LI (locality); see
``diffbackbones.screening`` for the exact definitions. All activations of a forward are reduced to these
numbers as they are computed (never held together). Writes ``screen.csv``, ``screen.png`` (each metric
along the execution order, coloured by kind, level boundaries marked), ``pca.png`` (the first three
principal components of every activation as RGB, first image) and ``candidates.json`` (the paper's rules
made numeric: increments dropped; DNI > ``--dni-max`` dropped unless LI > ``--li-max`` shows locality;
q/k with LI > ``--li-max`` dropped where a clean activation exists at the same stride).

Quantitative stage (``--rank DATA``, a labelled set in DDPM-seg's or mmseg's layout): each candidate alone
feeds the probe's pixel classifier in a fast setting (``--rank-models`` 1 classifier, ``--rank-epochs`` 2,
``--rank-pixels`` 1000 sampled pixels per training image, the first ``--rank-train`` 30 / ``--rank-test`` 20
images), and
``preset.json`` takes the best ``--k`` (4), at most ``--per-stride`` (2) per stride, as levels fine to
coarse: ``DiffusionBackbone(model, 'preset.json')``, ``timm.create_model(..., activations='preset.json')``
and mmseg's ``backbone=dict(type='DiffusionBackbone', activations='preset.json')`` accept it.
"""
import argparse
import csv
import json
import math
import re
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from tqdm import tqdm

from diffbackbones import ActivationCapture, DiffusionBackbone, get_model_spec, list_activations
from diffbackbones.cli import IMAGE_SUFFIXES, pretrained_option, read_image
from diffbackbones.loading import build_denoiser
from diffbackbones.probe import (PixelFeatures, clean_labels, compute_iou, find_split, label_map_of, load_pair,
                                 read_label_map)
from diffbackbones.probe import predict, train_ensemble
from diffbackbones.screening import ActivationStats, screen_samples, select_candidates, spearman

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('model', help='zoo name (sd15, sdxl, shapes_sd_tiny, test_sd_tiny, ...)')
    parser.add_argument('--weights', default=None,
                        help="'random', a local diffusers folder or hub id; omit: the zoo's weights (random for test models)")
    parser.add_argument('--images', required=True, help='image folder')
    parser.add_argument('--labels', default=None, help='label maps (same names, .png or .npy) for LI')
    parser.add_argument('--ignore', type=int, default=255)
    parser.add_argument('--n-images', type=int, default=16)
    parser.add_argument('--seeds', type=int, default=4, help='noise seeds per image (>= 2)')
    parser.add_argument('--t', type=int, default=None, help="timestep (default: the model's: 50, or 184 for flow-matching models)")
    parser.add_argument('--prompt', default='')
    parser.add_argument('--image-size', type=int, default=None, help="working size (default: the model's)")
    parser.add_argument('--kinds', default=None, help='comma-separated kinds to screen (default: all)')
    parser.add_argument('--levels', default=None, help='comma-separated name prefixes, e.g. up-level1,up-level2')
    parser.add_argument('--dni-max', type=float, default=0.5)
    parser.add_argument('--li-max', type=float, default=0.05)
    parser.add_argument('--rank', default=None, help='labelled set (DDPM-seg or mmseg layout): rank the candidates')
    parser.add_argument('--rank-models', type=int, default=1)
    parser.add_argument('--rank-epochs', type=int, default=2)
    parser.add_argument('--rank-resolution', type=int, default=128)
    parser.add_argument('--rank-train', type=int, default=30, help='training images used (DDPM-seg: 30)')
    parser.add_argument('--rank-test', type=int, default=20, help='test images used')
    parser.add_argument('--rank-pixels', type=int, default=1000, help='labelled pixels sampled per training image')
    parser.add_argument('--validate', action='store_true',
                        help="with --rank: Spearman of DNI/GI/LI against the probe, and the preset's probe mIoU "
                             "against the best single activation and the model's legacy preset (validation.json)")
    parser.add_argument('--k', type=int, default=4, help='activations in preset.json')
    parser.add_argument('--per-stride', type=int, default=2)
    parser.add_argument('--out', default='work_dirs/screen')
    parser.add_argument('--overwrite', action='store_true', help="replace an earlier screen's files in --out")
    return parser.parse_args(argv)


def screened_points(args, backbone_points):
    points = list(backbone_points)
    if args.kinds:
        kinds = set(args.kinds.split(','))
        unknown = kinds - {p.kind for p in points}
        if unknown:
            raise SystemExit(f'--kinds {sorted(unknown)} not in this model; kinds: {sorted({p.kind for p in points})}')
        points = [p for p in points if p.kind in kinds]
    if args.levels:
        prefixes = tuple(args.levels.split(','))
        points = [p for p in points if p.name.startswith(prefixes)]
    if not points:
        raise SystemExit('the --kinds/--levels filters leave no activation to screen')
    return points


def read_labels(folder: Path | None, image: Path) -> torch.Tensor | None:
    """The label map of ``image`` in ``folder`` (``STEM.npy`` first, then ``STEM.png``; never the image itself)."""
    if folder is None:
        return None
    try:
        return torch.from_numpy(read_label_map(label_map_of(image, folder)).astype(np.int64))
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(str(e)) from None


def screen(args, backbone: DiffusionBackbone, names: list[str], images: list[Path]) -> dict[str, ActivationStats]:
    """Every named activation of every image under ``args.seeds`` seeds, reduced as it is computed."""
    stats = {name: ActivationStats() for name in names}
    for n, path in enumerate(tqdm(images, desc='screen', unit='img')):
        pixels = read_image(path)
        labels = read_labels(Path(args.labels) if args.labels else None, path)
        if labels is not None and tuple(labels.shape) != tuple(pixels.shape[1:]):
            raise SystemExit(f'label map of {path} is {tuple(labels.shape)}, the image {tuple(pixels.shape[1:])}')
        image, work = backbone.working_input(pixels[None])
        labels_on = {}  # grid -> the label map resized to it (nearest), once per grid

        def reduce(name, value):
            grid = backbone.grid_of(name, work)
            if labels is not None and grid not in labels_on:
                labels_on[grid] = F.interpolate(labels[None, None].float(), size=grid, mode='nearest')[0, 0].long()
            return screen_samples(value[..., :grid[0], :grid[1]].float(), labels_on.get(grid), args.ignore,
                                  with_pca=n == 0)
        with torch.no_grad():
            latents = backbone.encode(image)
            kwargs = backbone.denoiser_inputs(latents, work)   # one row per seed
            with ActivationCapture(backbone.denoiser, names, stop_early=True, detach=True, catalog=backbone.points,
                                   reduce=reduce) as cap:
                backbone.denoiser(**kwargs)
        for name, numbers in cap.activations.items():
            stats[name].add(numbers)
    return stats


def rows_of(backbone, points, stats) -> list[dict]:
    rows = []
    for p in points:
        s = stats[p.name]
        level = re.match(r'(down|up)-level\d+|mid', p.name)
        rows.append(dict(name=p.name, kind=p.kind, level=level.group(0) if level else '', stride=backbone.stride_of[p.name],
                         channels=p.channels, order=p.order,
                         dni=s.mean('dni'), dni_low=s.mean('dni_low'), dni_high=s.mean('dni_high'), gi=s.mean('gi'),
                         li=s.mean('li')))
    return rows


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    kinds = sorted({r['kind'] for r in rows})
    colours = {k: plt.get_cmap('tab20')(i % 20) for i, k in enumerate(kinds)}
    metrics = [('dni', 'DNI (noise)'), ('gi', 'GI (cycles / image)'), ('li', 'LI (locality)')]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(10, len(rows) / 12), 9), sharex=True)
    order = [r['order'] for r in rows]
    boundaries = [(a['order'] + b['order']) / 2 for a, b in zip(rows, rows[1:]) if a['stride'] != b['stride']]
    for ax, (metric, label) in zip(axes, metrics):
        for kind in kinds:
            sel = [r for r in rows if r['kind'] == kind]
            ax.scatter([r['order'] for r in sel], [r[metric] for r in sel], s=14, color=colours[kind], label=kind)
        for x in boundaries:
            ax.axvline(x, color='grey', linestyle='--', linewidth=0.6)
        ax.set_ylabel(label)
    axes[0].set_title(title)
    axes[-1].set_xlabel('execution order (dashed: stride changes)')
    axes[-1].set_xlim(min(order) - 1, max(order) + 1)
    axes[0].legend(ncol=min(6, len(kinds)), fontsize=7, loc='upper left', bbox_to_anchor=(0, 1.35))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def contact_sheet(rows: list[dict], stats, path: Path, tile: int = 96) -> None:
    cols = max(1, min(12, math.ceil(math.sqrt(len(rows)))))
    n_rows = math.ceil(len(rows) / cols)
    sheet = Image.new('RGB', (cols * tile, n_rows * (tile + 12)), (255, 255, 255))
    pen = ImageDraw.Draw(sheet)
    for i, row in enumerate(rows):
        rgb = stats[row['name']].pca
        x, y = (i % cols) * tile, (i // cols) * (tile + 12)
        if rgb is not None:
            sheet.paste(Image.fromarray(rgb).resize((tile - 4, tile - 4), Image.NEAREST), (x + 2, y + 2))
        short = row['name'].replace('-repeat', '-r').replace('-vit-block', '-b').replace('level', 'l')
        pen.text((x + 2, y + tile - 2), short[-20:], fill=(0, 0, 0))
    sheet.save(path)


class RankProbe:
    """The probe's pixel classifier in a fast setting, on the activations of a labelled set."""

    def __init__(self, args, spec, names: list[str]):
        self.args = args
        published = {split: find_split(args.rank, split)[:limit]
                     for split, limit in (('train', args.rank_train), ('test', args.rank_test))}
        loaded = [load_pair(image, label, args.rank_resolution) for image, label in published['train'] + published['test']]
        images, self.labels = [i for i, _ in loaded], [lbl for _, lbl in loaded]
        self.n_train = len(published['train'])
        self.n_classes = 1 + max(int(lbl[lbl != args.ignore].max()) for lbl in self.labels if (lbl != args.ignore).any())
        backbone = DiffusionBackbone(args.model, names, pretrained=pretrained_option(spec, args.weights), t=args.t,
                                     prompt=args.prompt, image_size=args.image_size or spec.image_size,
                                     resize_features=False)
        per_name: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        with torch.no_grad():
            for image in tqdm(images, desc='rank: features', leave=False):
                for name, value in backbone.activations(image[None]).items():
                    per_name[name].append(value.float())
        self.activations = {n: torch.cat(v) for n, v in per_name.items()}
        rows, targets = [], []
        generator = torch.Generator().manual_seed(0)
        for n in range(self.n_train):
            label = clean_labels(self.labels[n], args.ignore)
            ys, xs = torch.nonzero(label != args.ignore, as_tuple=True)
            keep = torch.randperm(len(ys), generator=generator)[:args.rank_pixels]
            rows.append(torch.stack([torch.full_like(ys[keep], n), ys[keep], xs[keep]], 1))
            targets.append(label[ys[keep], xs[keep]])
        self.pixels, self.targets = torch.cat(rows), torch.cat(targets)

    def miou(self, names: list[str]) -> float:
        """Test mIoU (percent) of one classifier on these activations, upsampled and concatenated."""
        size = (self.args.rank_resolution, self.args.rank_resolution)
        features = PixelFeatures([self.activations[n] for n in names], size)
        models, _ = train_ensemble(features, self.pixels, self.targets, self.n_classes,
                                   seeds=list(range(self.args.rank_models)), max_epochs=self.args.rank_epochs)
        preds = [predict(models, features, n) for n in range(self.n_train, len(self.labels))]
        return 100 * compute_iou(preds, self.labels[self.n_train:], self.n_classes, self.args.ignore)['miou']


def rank(probe: RankProbe, candidates: list[dict]) -> list[dict]:
    """Probe mIoU of each candidate alone, best first."""
    ranked = [dict(c, miou=probe.miou([c['name']])) for c in tqdm(candidates, desc='rank', unit='activation')]
    return sorted(ranked, key=lambda r: -r['miou'])


def validate(probe: RankProbe, spec, ranked: list[dict], levels: list[list[str]]) -> dict:
    """Do the screening numbers predict the probe? And the preset against simpler choices."""
    correlations = {m: spearman([r[m] for r in ranked], [r['miou'] for r in ranked]) for m in ('dni', 'gi', 'li')}
    choices = {'preset.json': [n for level in levels for n in level], 'best single': [ranked[0]['name']]}
    if 'legacy' in spec.presets:
        choices['legacy (upsampler outputs)'] = [n for level in spec.presets['legacy'] for n in level]
    scores = {label: probe.miou(names) for label, names in choices.items()}
    return dict(spearman=correlations, miou=scores, choices=choices)


def build_preset(ranked: list[dict], k: int, per_stride: int) -> list[list[str]]:
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


def main(argv=None) -> dict:
    args = parse_args(argv)
    start = time.time()
    out = Path(args.out)
    if (out / 'screen.csv').exists() and not args.overwrite:
        raise SystemExit(f'{out / "screen.csv"} holds an earlier screen; choose another --out or pass --overwrite.')
    spec = get_model_spec(args.model)
    folder = Path(args.images)
    if not folder.is_dir():
        raise SystemExit(f'--images {folder} is not a folder')
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:args.n_images]
    if not images:
        raise SystemExit(f'{folder} holds no images ({", ".join(IMAGE_SUFFIXES)})')
    if args.seeds < 2:
        raise SystemExit('--seeds must be at least 2: noise is measured across seeds')
    # any activation builds the probe backbone (unpruned: every activation stays reachable)
    any_activation = ('practical' if 'practical' in spec.presets else next(iter(spec.presets), None)
                      or [list_activations(build_denoiser(spec, 'meta'))[-1].name])
    probe = DiffusionBackbone(args.model, any_activation, pretrained=pretrained_option(spec, args.weights), t=args.t,
                              prompt=args.prompt, image_size=args.image_size or spec.image_size,
                              ensemble_size=args.seeds, prune=False)
    args.t = probe.t  # the model's default when --t was not given
    points = screened_points(args, probe.points)
    names = [p.name for p in points]
    print(f'{args.model}: screening {len(names)} activations on {len(images)} images x {args.seeds} seeds at t={args.t}')
    stats = screen(args, probe, names, images)
    backbone_gb = sum(p.numel() * p.element_size() for p in probe.parameters()) / 2 ** 30
    rows = select_candidates(rows_of(probe, points, stats), args.dni_max, args.li_max)
    del probe
    out.mkdir(parents=True, exist_ok=True)
    fields = ['name', 'kind', 'level', 'stride', 'channels', 'order', 'dni', 'dni_low', 'dni_high', 'gi', 'li', 'keep', 'reason']
    with open(out / 'screen.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f'{r[k]:.4f}' if isinstance(r[k], float) else r[k]) for k in fields})
    plot(rows, out / 'screen.png', f'{args.model}: {len(images)} images x {args.seeds} seeds, t={args.t}')
    contact_sheet(rows, stats, out / 'pca.png')
    candidates = [r for r in rows if r['keep']]
    (out / 'candidates.json').write_text(json.dumps(dict(
        model=args.model, t=args.t, thresholds=dict(dni_max=args.dni_max, li_max=args.li_max),
        candidates=[r['name'] for r in candidates], screened=rows), indent=1))
    print(f'{len(candidates)} of {len(rows)} activations survive the rules; '
          f'{out / "screen.csv"}, screen.png, pca.png, candidates.json')
    report = dict(rows=rows, candidates=candidates)
    if args.rank:
        if not candidates:
            raise SystemExit('no candidate survives the rules: relax --dni-max / --li-max to rank some')
        names = [c['name'] for c in candidates]
        if args.validate and 'legacy' in spec.presets:
            names += [n for level in spec.presets['legacy'] for n in level if n not in names]
        probe_set = RankProbe(args, spec, names)
        ranked = rank(probe_set, candidates)
        levels = build_preset(ranked, args.k, args.per_stride)
        preset = dict(model=args.model, levels=levels, t=args.t,
                      ranking=[dict(name=r['name'], stride=r['stride'], miou=r['miou'], dni=r['dni'], gi=r['gi'], li=r['li'])
                               for r in ranked])
        (out / 'preset.json').write_text(json.dumps(preset, indent=1))
        print(f'{"activation":>48} {"stride":>6} {"mIoU":>7}')
        for r in ranked:
            print(f'{r["name"]:>48} {r["stride"]:6d} {r["miou"]:7.2f}')
        print(f'preset.json: {levels}')
        report.update(ranked=ranked, preset=preset)
        if args.validate:
            check = validate(probe_set, spec, ranked, levels)
            (out / 'validation.json').write_text(json.dumps(check, indent=1))
            print('Spearman correlation with the probe mIoU over the candidates: ' +
                  ', '.join(f'{m.upper()} {v:+.2f}' for m, v in check['spearman'].items()))
            for label, value in check['miou'].items():
                print(f'{label:>28}: probe mIoU {value:.2f}  {check["choices"][label]}')
            report.update(validation=check)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    print(f'{time.time() - start:.0f} s; peak memory {peak_gb:.2f} GB (RSS); the backbone\'s own weights {backbone_gb:.2f} GB')
    return report


if __name__ == '__main__':
    main(sys.argv[1:])
