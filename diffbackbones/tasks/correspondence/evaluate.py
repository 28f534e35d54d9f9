"""Semantic correspondence as one call: ``evaluate_correspondence`` builds the backbone, runs the zero-shot
(DIFT) or trained (the paper's Table 1) protocol and returns a ``CorrespondenceResult`` with the PCK tables.

    result = evaluate_correspondence('test_sd_tiny', 'data/shapes-pairs')            # zero-shot
    result = evaluate_correspondence('sd15', 'data/SPair-71k', protocol='trained', t=51,
                                     train='spair_71k_train.json', val='spair_71k_val-360.json',
                                     report='paper-best-val')
    result = evaluate_correspondence(preset='dift', data='data/SPair-71k')           # DIFT's configuration
    print(result.table())
    result.save('work_dirs/correspondence')   # correspondence.json and pictures/

Protocols:

- ``'zero-shot'`` (DIFT): the chosen activations as they are, upsampled to each image's size, cosine
  similarity, hard argmax.
- ``'trained'`` (the paper's Table 1): every image resized to the working size, every level resized to
  ``feature_size`` (128) and concatenated, one 3x3 convolution (C -> C, no bias) trained with a symmetric
  CLIP cross-entropy at the keypoints (temperature 0.07), AdamW lr 5e-4 wd 0.01, 2 epochs x 5,000 random
  training pairs, validated every 500 steps and after the last; matching on 512 x 512 upsampled maps.
  ``report='test'`` takes the weights with the best validation PCK (bbox, per keypoint) and reports the
  test split; ``report='paper-best-val'`` reports what the paper's code logs: the best validation value of
  each metric over the run.

Presets (``CORRESPONDENCE_PRESETS``) are published configurations: ``preset='dift'`` is SD2.1 (its 768 px
weights), ``up-level1-upsampler-out``, t = 261, an ensemble of 8, 768 px, prompt "a photo of a {category}",
zero-shot. A preset's values fill in what the call leaves out: ``evaluate_correspondence(preset='dift',
data=..., t=100)`` (or ``noise=dict(t=100)``) runs DIFT's configuration at t = 100.

PCK@alpha (0.1) by bbox (alpha x the larger side of the target box) and by image (of the target image), per
keypoint and per image (the mean over pairs), per category and overall.
"""
from __future__ import annotations

import copy
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from diffbackbones.backbone.stages import set_default_option
from diffbackbones.models.zoo import get_model_spec
from .data import Pair, find_pairs
from .geometric.evaluate import GeometricResult, evaluate_geometric
from .temporal.evaluate import TemporalResult, evaluate_temporal
from .features import DIFT_PROMPT, PAPER_PROMPT, FeatureSource, build_feature_source
from .matching import PCKTable, evaluate_pairs, pck_correct
from diffbackbones.utils.outputs import peak_rss_gb, refuse_earlier_run
from .trained import CorrespondenceHead, train_steps, training_schedule

__all__ = ['evaluate_correspondence', 'CorrespondenceResult', 'CORRESPONDENCE_PRESETS', 'PROTOCOLS', 'REPORTS', 'TASKS',
           'train_head', 'draw_pair', 'check_free']

PROTOCOLS = ('trained', 'zero-shot')
TASKS = ('semantic', 'geometric', 'temporal')
REPORTS = ('test', 'paper-best-val')

# name -> the arguments of evaluate_correspondence it sets; t / ensemble_size / image_size are backbone options
CORRESPONDENCE_PRESETS: dict[str, dict[str, Any]] = {
    'dift': dict(model='sd21', pretrained='stabilityai/stable-diffusion-2-1', activations=['up-level1-upsampler-out'],
                 t=261, ensemble_size=8, image_size=768, prompt=DIFT_PROMPT, protocol='zero-shot'),
}
# the preset keys that are evaluate_correspondence's own arguments (the others go to DiffusionBackbone)
_OWN_KEYS = ('model', 'pretrained', 'activations', 'prompt', 'protocol')
RESULT_FILE = 'correspondence.json'


def evaluate_correspondence(model: str | None = None, data: str | Path | None = None, *, task: str = 'semantic',
                            preset: str | None = None,
                            protocol: str | None = None, activations: str | Sequence | None = None,
                            levels: Sequence[int] | None = None, pretrained: bool | str | None = None,
                            prompt: str | None = None, train: str = 'trn', val: str = 'val', test: str = 'test',
                            report: str = 'test', epochs: int = 2, steps_per_epoch: int = 5000, lr: float = 5e-4,
                            weight_decay: float = 0.01, temperature: float = 0.07, feature_size: int = 128,
                            load_size: int = 512, val_every: int = 500, alpha: float = 0.1, seed: int = 0,
                            cache_mb: float = 2048, pictures: int = 8, progress: bool = False,
                            **backbone_options: Any) -> CorrespondenceResult | GeometricResult | TemporalResult:
    """PCK of semantic correspondence with ``model``'s activations on the keypoint pairs of ``data``.

    ``task='geometric'`` runs ``evaluate_geometric`` (HPatches homography estimation) and ``task='temporal'``
    ``evaluate_temporal`` (DAVIS / JHMDB label propagation) instead, with ``model``, ``data``, ``activations``,
    ``levels``, ``pretrained``, ``prompt`` (default: empty), ``pictures``, ``progress`` and the keywords that
    task takes (``keypoints=``, ``estimator=``, ``short_side=``, ...) or the backbone's; the semantic task's own
    arguments do not apply there.

    Args:
        model: Zoo name (``'sd15'``, ``'sdxl'``, ``'sd21'``, ``'shapes_sd_tiny'``, ``'test_sd_tiny'``, ...);
            may be left out when ``preset`` names one.
        task: ``'semantic'`` (default: SPair-71k keypoint pairs), ``'geometric'`` or ``'temporal'``.
        data: An SPair-71k root (``JPEGImages/``, ``PairAnnotation/{trn,val,test}/``), or a list-of-pairs
            ``.json``.
        preset: A name in ``CORRESPONDENCE_PRESETS`` (``'dift'``): a published configuration whose values
            fill in every argument and backbone option this call leaves out (None or not given).
        protocol: ``'zero-shot'`` (default; DIFT: the activations as they are) or ``'trained'`` (the
            paper's: a 3x3 convolution trained on ``train``, selected on ``val``).
        activations: A preset name of the model (default ``'practical'``), a preset file, a layer id or a list
            of them (or of levels), as ``DiffusionBackbone`` takes them.
        levels: Indices of the levels to keep (``DiffusionBackbone.select_levels``); None keeps all.
        pretrained: As ``DiffusionBackbone``'s (True: the zoo's hub id; False: random; or a local
            diffusers folder / hub id); None: the zoo's weights, random for the test models.
        prompt: Prompt template, ``{category}`` is filled in per pair (one prompt per category is encoded).
            Default: trained: the paper's fixed prompt (``PAPER_PROMPT``); zero-shot: ``DIFT_PROMPT``.
        train: Training split name (``'trn'``) or list-of-pairs ``.json`` (trained protocol).
        val: Validation split name or ``.json`` (trained protocol).
        test: Test split name or ``.json``.
        report: ``'test'``: the test split's PCK (trained: with the weights of the best validation PCK@alpha
            bbox per keypoint); ``'paper-best-val'`` (trained only): the best validation value of each metric
            over the run, as the paper's code logs it. Zero-shot always reports the test split.
        epochs: Training epochs (each a permutation of the training pairs).
        steps_per_epoch: Training pairs per epoch (the first of each permutation).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        temperature: Temperature of the CLIP loss.
        feature_size: Grid the levels are resized to before the convolution (trained).
        load_size: Grid matching runs on (trained); zero-shot matches on each image's own size.
        val_every: Validate every this many training steps (and after the last).
        alpha: The PCK threshold, a fraction of the larger side of the target box / image.
        seed: Seed of the training order and of the head's initialisation.
        cache_mb: Image features kept in memory (MB).
        pictures: Pairs whose matches ``CorrespondenceResult.save`` draws (with ``report='paper-best-val'``
            the first ``pictures`` validation pairs are matched for them).
        progress: Show progress bars (nothing is printed otherwise).
        **backbone_options: Further ``DiffusionBackbone`` options, flat or as stage dicts: ``t``
            (default: the model's), ``ensemble_size`` (1), ``image_size`` (the model's), ``dtype``,
            ``noise=dict(t=261, ensemble=8)``, ... The levels stay on the working grid
            (``resize_features=False``) unless given otherwise.

    Returns:
        A ``CorrespondenceResult``: ``.pck`` (the reported numbers), ``.table()``, ``.save(folder)``,
        ``.to_dict()``, and ``.training`` (losses and validations) for the trained protocol.

    Raises:
        ValueError: An unknown model, preset, protocol or report; an empty split; a bad annotation.
        FileNotFoundError: ``data`` or a split is not where it should be.
    """
    if task != 'semantic':
        if task not in TASKS:
            raise ValueError(f'task must be one of {TASKS}; got {task!r}')
        if preset is not None or protocol is not None:
            raise ValueError(f"preset= and protocol= are the semantic task's; task={task!r} takes neither")
        if model is None or data is None:
            raise ValueError(f'model and data are required for task={task!r}')
        run = evaluate_geometric if task == 'geometric' else evaluate_temporal
        return run(model, data, activations=activations or 'practical', levels=levels, pretrained=pretrained,
                   prompt=prompt or '', pictures=pictures, progress=progress, **backbone_options)
    start = time.time()
    options = dict(backbone_options)
    given = dict(model=model, pretrained=pretrained, activations=activations, prompt=prompt, protocol=protocol)
    if preset is not None:
        if preset not in CORRESPONDENCE_PRESETS:
            raise ValueError(f'unknown correspondence preset {preset!r}; presets: {sorted(CORRESPONDENCE_PRESETS)}')
        for key, value in CORRESPONDENCE_PRESETS[preset].items():
            if key in _OWN_KEYS:
                given[key] = value if given[key] is None else given[key]
            else:
                set_default_option(options, key, value)
    model, pretrained, activations = given['model'], given['pretrained'], given['activations'] or 'practical'
    protocol = given['protocol'] or 'zero-shot'
    if model is None:
        raise ValueError('model (or preset) is required')
    if data is None:
        raise ValueError('data is required: an SPair-71k root or a list-of-pairs .json')
    if protocol not in PROTOCOLS:
        raise ValueError(f'protocol must be one of {PROTOCOLS}; got {protocol!r}')
    if report not in REPORTS:
        raise ValueError(f'report must be one of {REPORTS}; got {report!r}')
    conditioning = options.get('conditioning')
    if isinstance(conditioning, Mapping) and 'prompt' in conditioning:
        raise ValueError('give the prompt template as prompt=... ({category} is filled in per pair), '
                         'not in conditioning=dict(prompt=...)')
    prompt = given['prompt'] or (PAPER_PROMPT if protocol == 'trained' else DIFT_PROMPT)
    get_model_spec(model)  # an unknown model fails before the data is read

    trained = protocol == 'trained'
    wanted = {'train': train, 'val': val} if trained else {}
    if not (trained and report == 'paper-best-val'):
        wanted['test'] = test
    pairs = {name: find_pairs(data, split) for name, split in wanted.items()}
    for name, split_pairs in pairs.items():
        if not split_pairs:
            raise ValueError(f'the {name} split ({wanted[name]!r}) of {data} has no pairs')
    categories = sorted({p.category for split_pairs in pairs.values() for p in split_pairs})
    prompts = list(dict.fromkeys(prompt.format(category=c) for c in categories))
    features = build_feature_source(model, activations, levels, pretrained, prompt, prompts, cache_mb, **options)
    backbone, (w, h) = features.backbone, features.size
    pretrained, activations, options = (features.settings[k] for k in ('pretrained', 'activations', 'backbone_options'))
    channels = sum(info['num_chs'] for info in backbone.feature_info)

    training = None
    if trained:
        head, training = train_head(features, channels, pairs['train'], pairs['val'], epochs=epochs,
                                    steps_per_epoch=steps_per_epoch, lr=lr, weight_decay=weight_decay,
                                    temperature=temperature, feature_size=feature_size, load_size=load_size,
                                    val_every=val_every, alpha=alpha, seed=seed, progress=progress)
        maps_of, grid = (lambda p, c: head(features(p, c))), load_size
    else:
        maps_of, grid = features, None

    table = None
    with torch.no_grad():
        if trained and report == 'paper-best-val':
            split = 'val'
            summary = dict(best_val_img=max(v['img_per_point'] for v in training['validations']),
                           best_val_bbox=max(v['bbox_per_point'] for v in training['validations']))
            matched = pairs['val'][:pictures]
            _, predictions = evaluate_pairs(matched, maps_of, grid, alpha)
        else:
            split, matched = 'test', pairs['test']
            table, predictions = evaluate_pairs(matched, maps_of, grid, alpha,
                                                progress=lambda x: tqdm(x, desc='test', leave=False,
                                                                        disable=not progress))
            summary = table.summary()
    records = []
    for pair, predicted in zip(matched, predictions):
        correct = pck_correct(predicted, pair.target_points, pair.target_bbox, pair.target_size, alpha)
        records.append(dict(pair=pair.name, category=pair.category, predicted=predicted.tolist(),
                            correct_bbox=correct['bbox'].tolist(), correct_img=correct['img'].tolist()))
    settings = dict(model=model, data=str(data), preset=preset, protocol=protocol, activations=activations,
                    levels=None if levels is None else list(levels), pretrained=pretrained, prompt=prompt,
                    train=train, val=val, test=test, report=report, epochs=epochs, steps_per_epoch=steps_per_epoch,
                    lr=lr, weight_decay=weight_decay, temperature=temperature, feature_size=feature_size,
                    load_size=load_size, val_every=val_every, alpha=alpha, seed=seed, cache_mb=cache_mb,
                    pictures=pictures, backbone_options=options)
    return CorrespondenceResult(
        settings=settings, model=model, protocol=protocol, levels=[list(level) for level in backbone.levels],
        channels=channels, working_size=(w, h), pair_counts={name: len(v) for name, v in pairs.items()},
        split=split, pck=summary, pairs=records, training=training, alpha=alpha, pictures=pictures,
        peak_rss_gb=peak_rss_gb(), seconds=time.time() - start, pck_table=table, matched=list(matched))


def train_head(features: FeatureSource, channels: int, train_pairs: Sequence[Pair], val_pairs: Sequence[Pair], *,
               epochs: int = 2, steps_per_epoch: int = 5000, lr: float = 5e-4, weight_decay: float = 0.01,
               temperature: float = 0.07, feature_size: int = 128, load_size: int = 512, val_every: int = 500,
               alpha: float = 0.1, seed: int = 0, progress: bool = False) -> tuple[CorrespondenceHead, dict]:
    """The paper's training loop: a ``CorrespondenceHead`` trained on ``train_pairs``, validated on ``val_pairs``.

    Validates every ``val_every`` steps (the paper's schedule: steps 500, 1000, ...) and after the last.

    Args:
        features: ``features(path, category)`` -> an image's levels.
        channels: Channels of the concatenated levels.
        train_pairs: Training pairs.
        val_pairs: Validation pairs.
        epochs / steps_per_epoch / lr / weight_decay / temperature / feature_size / load_size / val_every /
            alpha / seed: As ``evaluate_correspondence``'s.
        progress: Show progress bars (the last validation's PCK in the training bar).

    Returns:
        The head with the weights of the best validation PCK@alpha (bbox, per keypoint), in eval mode, and
        the log: ``steps``, ``loss_first``/``loss_last`` (means over a window), ``losses``, ``validations``
        (``step`` and the overall PCK of each) and ``selected_step``.
    """
    torch.manual_seed(seed)
    head = CorrespondenceHead(channels, feature_size)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    order = training_schedule(len(train_pairs), steps_per_epoch, epochs, np.random.default_rng(seed))
    validations, best, postfix = [], {}, {}
    bar = tqdm(total=len(order), desc='train', leave=False, disable=not progress)

    def validate(step: int) -> None:
        head.eval()
        with torch.no_grad():
            table, _ = evaluate_pairs(val_pairs, lambda p, c: head(features(p, c)), grid=load_size, alpha=alpha,
                                      progress=lambda x: tqdm(x, desc='validate', leave=False, disable=not progress))
        head.train()
        scores = dict(step=step + 1, **table.summary()['all'])
        validations.append(scores)
        if not best or scores['bbox_per_point'] > best['scores']['bbox_per_point']:
            best.update(scores=scores, state=copy.deepcopy(head.state_dict()))
        postfix.update(val_bbox=f'{scores["bbox_per_point"]:.2f}', val_img=f'{scores["img_per_point"]:.2f}')
        bar.set_postfix(postfix)

    def on_step(step: int, loss: float) -> None:
        bar.update()
        postfix['loss'] = f'{loss:.3f}'
        bar.set_postfix(postfix, refresh=False)
        if step > 0 and step % val_every == 0:  # the paper's schedule: steps 500, 1000, ...
            validate(step)

    try:
        losses = train_steps(head, features, train_pairs, order, optimizer, temperature, on_step)
    finally:
        bar.close()
    if not validations or validations[-1]['step'] != len(order):
        validate(len(order) - 1)  # the last weights too (the paper's schedule never validates them)
    head.load_state_dict(best['state'])
    head.eval()
    window = max(1, min(50, len(losses) // 4))
    log = dict(steps=len(order), loss_first=float(np.mean(losses[:window])), loss_last=float(np.mean(losses[-window:])),
               losses=losses, validations=validations, selected_step=best['scores']['step'])
    return head, log


def draw_pair(path: str | Path, pair: Pair, predicted: np.ndarray, correct: np.ndarray) -> Path:
    """Source | target; each source keypoint joined to its match, green when ``correct``, red not; the
    true target keypoints as white rings (a PNG)."""
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
    for (sx, sy), (px, py), (tx, ty), ok in zip(pair.source_points * zoom, np.asarray(predicted) * zoom,
                                                pair.target_points * zoom, correct):
        colour = (40, 220, 60) if ok else (230, 40, 40)
        px, tx = px + source.width, tx + source.width
        pen.line([(sx, sy), (px, py)], fill=colour, width=1)
        pen.ellipse([tx - r - 1, ty - r - 1, tx + r + 1, ty + r + 1], outline=(255, 255, 255))
        for x, y in ((sx, sy), (px, py)):
            pen.ellipse([x - r, y - r, x + r, y + r], fill=colour)
    canvas.save(path)
    return Path(path)


def check_free(folder: str | Path, overwrite: bool) -> None:
    """Refuse to write over an earlier run's ``correspondence.json`` unless asked to."""
    refuse_earlier_run(Path(folder) / RESULT_FILE, overwrite)


@dataclass
class CorrespondenceResult:
    """What ``evaluate_correspondence`` measured.

    Attributes:
        settings: The run's settings (the call's arguments as resolved; the command stores its flags).
        model: Zoo name.
        protocol: ``'zero-shot'`` or ``'trained'``.
        levels: The backbone's levels (activation ids per level).
        channels: Channels of all levels together.
        working_size: (w, h) every image is resized to.
        pair_counts: Pairs per split read (``train``/``val``/``test``).
        split: The split reported: ``'test'``, or ``'val'`` for ``report='paper-best-val'``.
        pck: ``PCKTable.summary()`` of the test split ({category: scores, 'all': scores}, percent), or
            ``best_val_img``/``best_val_bbox`` for ``report='paper-best-val'``.
        pairs: Per matched pair: ``pair``, ``category``, ``predicted`` (x, y), ``correct_bbox``,
            ``correct_img`` (every test pair; the first ``pictures`` validation pairs for paper-best-val).
        training: The training log (``train_head``), None for zero-shot.
        alpha: The PCK threshold.
        pictures: Pairs ``save`` draws.
        peak_rss_gb: Peak resident memory of the process (GB).
        seconds: Time the evaluation took.
        pck_table: The test split's ``PCKTable`` (None for paper-best-val).
        matched: The ``Pair`` of each entry of ``pairs`` (for the pictures).
    """

    settings: dict
    model: str
    protocol: str
    levels: list[list[str]]
    channels: int
    working_size: tuple[int, int]
    pair_counts: dict[str, int]
    split: str
    pck: dict
    pairs: list[dict]
    training: dict | None
    alpha: float
    pictures: int
    peak_rss_gb: float
    seconds: float
    pck_table: PCKTable | None = field(default=None, repr=False)
    matched: list[Pair] = field(default_factory=list, repr=False)

    def table(self) -> str:
        """The report as text: model, levels and pairs; the training (each validation, the loss, the step
        selected); the PCK table of the test split, or the best validation values for paper-best-val."""
        a = f'{self.alpha:g}'
        w, h = self.working_size
        lines = [f'{self.model} {self.protocol}: levels {self.levels}, {self.channels} channels, {w} x {h} working '
                 'size; pairs: ' + ', '.join(f'{k} {v}' for k, v in self.pair_counts.items())]
        if self.training is not None:
            t = self.training
            lines += [f'step {v["step"]}: val PCK@{a} bbox {v["bbox_per_point"]:.2f}, img {v["img_per_point"]:.2f}'
                      for v in t['validations']]
            lines.append(f'training loss {t["loss_first"]:.3f} -> {t["loss_last"]:.3f} over {t["steps"]} steps; '
                         f'weights of step {t["selected_step"]} selected on val')
        if self.split == 'val':
            lines.append(f"best validation PCK@{a} over the run (the paper's report, each metric its own maximum): "
                         f'img {self.pck["best_val_img"]:.2f} / bbox {self.pck["best_val_bbox"]:.2f}')
        elif self.pck_table is not None:
            lines.append(self.pck_table.format())
        return '\n'.join(lines)

    def to_dict(self) -> dict:
        """What ``correspondence.json`` holds: settings, levels, channels, split, pck, pairs, training,
        peak_rss_gb and seconds."""
        return dict(settings=self.settings, levels=self.levels, channels=self.channels, split=self.split,
                    pck=self.pck, pairs=self.pairs, training=self.training, peak_rss_gb=self.peak_rss_gb,
                    seconds=self.seconds)

    def save(self, out_dir: str | Path, overwrite: bool = False) -> Path:
        """Write ``correspondence.json`` and ``pictures/`` (the first ``pictures`` matched pairs, each
        keypoint joined to its match: green when correct by bbox, red not) into ``out_dir``.

        An earlier run in ``out_dir`` (its ``correspondence.json``) is kept unless ``overwrite``: raises
        ``FileExistsError``. Returns the folder.
        """
        out = Path(out_dir)
        check_free(out, overwrite)
        pictures = out / 'pictures'
        pictures.mkdir(parents=True, exist_ok=True)
        for record, pair in list(zip(self.pairs, self.matched))[:self.pictures]:
            draw_pair(pictures / f'{pair.name.replace(":", "_")}.png', pair, np.array(record['predicted']),
                      np.array(record['correct_bbox']))
        (out / RESULT_FILE).write_text(json.dumps(self.to_dict(), indent=1, default=str))
        return out
