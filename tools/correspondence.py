"""Semantic correspondence with a diffusion backbone: SPair-71k's PCK@0.1, two protocols.

    python tools/make_correspondence.py data/shapes-pairs                       # the embedded set
    python tools/correspondence.py --model test_sd_tiny --data data/shapes-pairs  # prints the table, writes pictures

Data: an SPair-71k root (``JPEGImages/``, ``PairAnnotation/{trn,val,test}/``) with ``--train/--val/--test``
naming its splits, or the paper's list-of-pairs JSONs (``--val spair_71k_val-360.json``: a path, or a file
in ``--data`` or ``--data/JPEGImages``).

``--protocol trained`` (default; the paper's Table 1): every image resized to the working size, every
level resized to 128 x 128 and concatenated, one 3x3 convolution (C -> C, no bias) trained with a symmetric
CLIP cross-entropy at the keypoints (temperature 0.07), AdamW lr 5e-4 wd 0.01, 2 epochs x 5,000 random
training pairs, validated every 500 steps and after the last; matching on 512 x 512 upsampled maps.
``--report test`` (default) takes the weights with the best validation PCK@0.1 (bbox, per keypoint) and
reports the test split; ``--report paper-best-val`` reports what the paper's code logs: the best validation
value of each metric over the run (on ``spair_71k_val-360.json`` in the paper).

``--protocol zero-shot`` (DIFT): the chosen activations as they are, upsampled to each image's size, cosine
similarity, hard argmax. ``--preset dift`` sets DIFT's configuration: SD2.1 (its 768 px weights,
stabilityai/stable-diffusion-2-1), ``up-level1-upsampler-out``, t = 261, an ensemble of 8, 768 px,
prompt "a photo of a {category}".

PCK@0.1 by bbox (0.1 x the larger side of the target box) and by image (of the target image), per keypoint
and per image (the mean over pairs), per category and overall.

The paper's targets (Meng et al. 2024, Table 1; SPair-71k PCK@0.1 img / bbox, per keypoint), given SPair-71k
in data/SPair-71k with the paper's three JSONs in its JPEGImages/ and the weights (``--t 51`` on SD1.5: the
paper's t=50 as its PNDM scheduler hands it to the UNet, see configs/paper/; the paper ran fp16, ``--dtype fp16``
on a GPU):

    Ours-v1.5    77.78 / 69.83   python tools/correspondence.py --model sd15 --activations practical --t 51 --data data/SPair-71k --train spair_71k_train.json --val spair_71k_val-360.json --report paper-best-val
    Ours-XL      81.72 / 75.18   python tools/correspondence.py --model sdxl --activations practical --data data/SPair-71k --train spair_71k_train.json --val spair_71k_val-360.json --report paper-best-val
    Legacy-v1.5  75.14 / 66.73   python tools/correspondence.py --model sd15 --activations legacy --t 51 --data data/SPair-71k --train spair_71k_train.json --val spair_71k_val-360.json --report paper-best-val
    DHF          72.56 / 64.61   (Diffusion Hyperfeatures; not a model of this package)

DIFT's zero-shot evaluation on SPair-71k's test split (its eval_spair.py: per image and per point
PCK@0.1 by bbox):

    python tools/correspondence.py --preset dift --data data/SPair-71k
"""
import argparse
import copy
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from diffbackbones import DiffusionBackbone, get_model_spec
from diffbackbones.cli import activations_option, pretrained_option
from diffbackbones.correspondence import (DIFT_PROMPT, PAPER_PROMPT, CorrespondenceHead, FeatureSource,
                                          evaluate_pairs, find_pairs, pck_correct, train_steps, training_schedule)

PRESETS = {'dift': dict(model='sd21', weights='stabilityai/stable-diffusion-2-1', activations='up-level1-upsampler-out',
                        t=261, ensemble=8, image_size=768, prompt=DIFT_PROMPT, protocol='zero-shot')}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--preset', choices=sorted(PRESETS), default=None,
                        help="a published configuration (its options can still be overridden)")
    parser.add_argument('--model', default=None, help='zoo name (sd15, sdxl, sd21, shapes_sd_tiny, test_sd_tiny, ...)')
    parser.add_argument('--activations', default='practical', help='preset name or comma-separated layer ids')
    parser.add_argument('--levels', default=None, help='comma-separated indices of the levels to use (default: all)')
    parser.add_argument('--data', required=True, help='SPair-71k root, or a list-of-pairs .json')
    parser.add_argument('--protocol', choices=('trained', 'zero-shot'), default='trained')
    parser.add_argument('--weights', default=None,
                        help="'random', a local diffusers folder or hub id; omit: the zoo's weights (random for test models)")
    parser.add_argument('--t', type=int, default=None, help="timestep (default: the model's: 50, or 184 for flow-matching models)")
    parser.add_argument('--ensemble', type=int, default=1, help='noise samples averaged per image')
    parser.add_argument('--prompt', default=None,
                        help=f'prompt template, {{category}} is filled in (default: trained: the paper\'s fixed '
                             f'prompt; zero-shot: "{DIFT_PROMPT}")')
    parser.add_argument('--image-size', type=int, default=None, help="working size (default: the model's)")
    parser.add_argument('--dtype', default='fp32')
    parser.add_argument('--train', default='trn', help='training split name or list-of-pairs .json')
    parser.add_argument('--val', default='val', help='validation split name or .json')
    parser.add_argument('--test', default='test', help='test split name or .json')
    parser.add_argument('--report', choices=('test', 'paper-best-val'), default='test')
    parser.add_argument('--epochs', type=int, default=2)
    parser.add_argument('--steps-per-epoch', type=int, default=5000)
    parser.add_argument('--lr', type=float, default=5e-4)
    parser.add_argument('--weight-decay', type=float, default=0.01)
    parser.add_argument('--temperature', type=float, default=0.07)
    parser.add_argument('--feature-size', type=int, default=128, help='grid the levels are resized to (trained)')
    parser.add_argument('--load-size', type=int, default=512, help='grid matching runs on (trained)')
    parser.add_argument('--val-every', type=int, default=500)
    parser.add_argument('--alpha', type=float, default=0.1)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--cache-mb', type=float, default=2048, help='image features kept in memory')
    parser.add_argument('--out', default='work_dirs/correspondence')
    parser.add_argument('--pictures', type=int, default=8, help='pairs drawn')
    parser.add_argument('--overwrite', action='store_true', help="replace an earlier run's correspondence.json")
    args = parser.parse_args(argv)
    if args.preset:  # the preset's values, except where the command line set something else
        given = [arg.split('=')[0] for arg in (sys.argv[1:] if argv is None else argv)]
        explicit = {a.dest for a in parser._actions if any(opt in given for opt in a.option_strings)}
        for key, value in PRESETS[args.preset].items():
            if key not in explicit:
                setattr(args, key, value)
    if args.model is None:
        parser.error('--model (or --preset) is required')
    if args.prompt is None:
        args.prompt = PAPER_PROMPT if args.protocol == 'trained' else DIFT_PROMPT
    return args


def build_backbone(args, prompts: list[str]) -> DiffusionBackbone:
    spec = get_model_spec(args.model)
    backbone = DiffusionBackbone(args.model, activations_option(args.activations),
                                 pretrained=pretrained_option(spec, args.weights), t=args.t, prompt=prompts,
                                 ensemble_size=args.ensemble, image_size=args.image_size or spec.image_size,
                                 resize_features=False, dtype=args.dtype)
    if args.levels is not None:
        backbone.select_levels([int(i) for i in args.levels.split(',')])
    return backbone


def draw(path: Path, pair, predicted: np.ndarray, correct: np.ndarray) -> None:
    """Source | target; each source keypoint joined to its match, green when correct (PCK bbox), red not;
    the true target keypoints as white rings."""
    with Image.open(pair.source) as s, Image.open(pair.target) as t:
        source, target = s.convert('RGB'), t.convert('RGB')
    zoom = max(1, round(384 / max(source.height, target.height)))  # small images are drawn larger
    if zoom > 1:
        source = source.resize((source.width * zoom, source.height * zoom), Image.NEAREST)
        target = target.resize((target.width * zoom, target.height * zoom), Image.NEAREST)
    canvas = Image.new('RGB', (source.width + target.width, max(source.height, target.height)))
    canvas.paste(source, (0, 0))
    canvas.paste(target, (source.width, 0))
    pen = ImageDraw.Draw(canvas)
    r = max(2, round(max(canvas.size) / 150))
    for (sx, sy), (px, py), (tx, ty), ok in zip(pair.source_points * zoom, predicted * zoom, pair.target_points * zoom,
                                                correct):
        colour = (40, 220, 60) if ok else (230, 40, 40)
        px, tx = px + source.width, tx + source.width
        pen.line([(sx, sy), (px, py)], fill=colour, width=1)
        pen.ellipse([tx - r - 1, ty - r - 1, tx + r + 1, ty + r + 1], outline=(255, 255, 255))
        for x, y in ((sx, sy), (px, py)):
            pen.ellipse([x - r, y - r, x + r, y + r], fill=colour)
    canvas.save(path)


def train(args, features: FeatureSource, channels: int, train_pairs, val_pairs) -> tuple[CorrespondenceHead, dict]:
    torch.manual_seed(args.seed)
    head = CorrespondenceHead(channels, args.feature_size)
    optimizer = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    order = training_schedule(len(train_pairs), args.steps_per_epoch, args.epochs, np.random.default_rng(args.seed))
    validations, best = [], {}
    bar = tqdm(total=len(order), desc='train', leave=False)

    def validate(step: int) -> None:
        head.eval()
        with torch.no_grad():
            table, _ = evaluate_pairs(val_pairs, lambda p, c: head(features(p, c)), grid=args.load_size,
                                      alpha=args.alpha, progress=lambda x: tqdm(x, desc='validate', leave=False))
        head.train()
        scores = dict(step=step + 1, **table.summary()['all'])
        validations.append(scores)
        if not best or scores['bbox_per_point'] > best['scores']['bbox_per_point']:
            best.update(scores=scores, state=copy.deepcopy(head.state_dict()))
        tqdm.write(f'step {step + 1}: val PCK@{args.alpha:g} bbox {scores["bbox_per_point"]:.2f}, '
                   f'img {scores["img_per_point"]:.2f}')

    def on_step(step: int, loss: float) -> None:
        bar.update()
        bar.set_postfix(loss=f'{loss:.3f}')
        if step > 0 and step % args.val_every == 0:  # the paper's schedule: steps 500, 1000, ...
            validate(step)

    losses = train_steps(head, features, train_pairs, order, optimizer, args.temperature, on_step)
    bar.close()
    if not validations or validations[-1]['step'] != len(order):
        validate(len(order) - 1)  # the last weights too (the paper's schedule never validates them)
    head.load_state_dict(best['state'])
    head.eval()
    window = max(1, min(50, len(losses) // 4))
    log = dict(steps=len(order), loss_first=float(np.mean(losses[:window])), loss_last=float(np.mean(losses[-window:])),
               losses=losses, validations=validations, selected_step=best['scores']['step'])
    return head, log


def main(argv=None) -> dict:
    args = parse_args(argv)
    start = time.time()
    out = Path(args.out)
    if (out / 'correspondence.json').exists() and not args.overwrite:
        raise SystemExit(f'{out / "correspondence.json"} holds an earlier run; choose another --out or pass --overwrite.')
    trained = args.protocol == 'trained'
    wanted = {'train': args.train, 'val': args.val} if trained else {}
    if not (trained and args.report == 'paper-best-val'):
        wanted['test'] = args.test
    pairs = {name: find_pairs(args.data, split) for name, split in wanted.items()}
    for name, split_pairs in pairs.items():
        if not split_pairs:
            raise SystemExit(f'the {name} split ({wanted[name]!r}) of {args.data} has no pairs')
    categories = sorted({p.category for split_pairs in pairs.values() for p in split_pairs})
    prompts = list(dict.fromkeys(args.prompt.format(category=c) for c in categories))
    backbone = build_backbone(args, prompts)
    size = backbone.stages.image.size
    features = FeatureSource(backbone, (size[1], size[0]), args.prompt, args.cache_mb)
    channels = sum(info['num_chs'] for info in backbone.feature_info)
    print(f'{args.model} {args.protocol}: levels {[list(level) for level in backbone.levels]}, {channels} channels, '
          f'{size[1]} x {size[0]} working size; pairs: ' + ', '.join(f'{k} {len(v)}' for k, v in pairs.items()))
    out.mkdir(parents=True, exist_ok=True)

    training = None
    if trained:
        head, training = train(args, features, channels, pairs['train'], pairs['val'])
        print(f'training loss {training["loss_first"]:.3f} -> {training["loss_last"]:.3f} over {training["steps"]} steps; '
              f'weights of step {training["selected_step"]} selected on val')
        maps_of, grid = (lambda p, c: head(features(p, c))), args.load_size
    else:
        maps_of, grid = features, None

    if trained and args.report == 'paper-best-val':
        best_img = max(v['img_per_point'] for v in training['validations'])
        best_bbox = max(v['bbox_per_point'] for v in training['validations'])
        print(f'best validation PCK@{args.alpha:g} over the run (the paper\'s report, each metric its own maximum): '
              f'img {best_img:.2f} / bbox {best_bbox:.2f}')
        report_split, summary = 'val', dict(best_val_img=best_img, best_val_bbox=best_bbox)
        table, predictions = None, []
        drawn = pairs['val'][:args.pictures]
        with torch.no_grad():
            _, predictions = evaluate_pairs(drawn, maps_of, grid, args.alpha)
    else:
        report_split = 'test'
        with torch.no_grad():
            table, predictions = evaluate_pairs(pairs['test'], maps_of, grid, args.alpha,
                                                progress=lambda x: tqdm(x, desc='test', leave=False))
        summary = table.summary()
        print(table.format())
        drawn = pairs['test'][:len(predictions)]

    pictures = out / 'pictures'
    pictures.mkdir(exist_ok=True)
    results = []
    for n, (pair, predicted) in enumerate(zip(drawn, predictions)):
        correct = pck_correct(predicted, pair.target_points, pair.target_bbox, pair.target_size, args.alpha)
        if n < args.pictures:
            draw(pictures / f'{pair.name.replace(":", "_")}.png', pair, predicted, correct['bbox'])
        results.append(dict(pair=pair.name, category=pair.category, predicted=predicted.tolist(),
                            correct_bbox=correct['bbox'].tolist(), correct_img=correct['img'].tolist()))
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    elapsed = time.time() - start
    print(f'peak memory {peak_gb:.2f} GB (RSS), {elapsed:.0f} s; pictures in {pictures}')
    report = dict(settings=vars(args), levels=[list(level) for level in backbone.levels], channels=channels,
                  split=report_split, pck=summary, pairs=results, training=training, peak_rss_gb=peak_gb,
                  seconds=elapsed)
    (out / 'correspondence.json').write_text(json.dumps(report, indent=1, default=str))
    return report


if __name__ == '__main__':
    main(sys.argv[1:])
