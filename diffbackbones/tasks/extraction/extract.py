"""Features of an image folder to disk: ``extract`` writes a resumable, sharded ``FeatureStore``.

    from diffbackbones.tasks.extraction.extract import extract
    store = extract('test_sd_tiny', 'data/shapes/img_dir/val', 'work_dirs/features', t=50)
    store.level(0, 1)               # level 1 of the first image, as the backbone returns it

Each image's activations are stored one tensor per activation, on the working size's grid
(``aggregate=True``: every activation resized to the finest one's grid and concatenated into one
tensor, as the paper code's ``--aggregate_output``), fp16 by default, in shards of ``shard_size`` images
written atomically (temporary file, then rename; ``store.py``). The store's ``settings.json`` records
every setting that decides the stored values; a folder holding another run is refused, and ``resume``
continues a run only with identical settings (naming every setting that differs).

Under ``torchrun`` the caller initialises the process group (``torch.distributed.init_process_group()``;
the ``diffbackbones extract`` command does) and rank r of N takes images r, r + N, ...: the group belongs
to the program, which chooses its backend and timeout and may be using it for more than this call.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from diffbackbones.backbone.diffusion_backbone import DiffusionBackbone
from diffbackbones.utils.images import IMAGE_SUFFIXES, read_image
from diffbackbones.backbone.presets import ActivationsArg
from diffbackbones.backbone.stages import STAGE_VARIANTS, Stages
from .store import INDEX, SETTINGS, FeatureStore, complete_shards, shard_records, write_shard
from diffbackbones.version import __version__
from diffbackbones.models.zoo import default_weights, get_model_spec

__all__ = ['extract', 'run_extraction', 'ExtractionRun', 'list_images', 'STORE_DTYPES']

STORE_DTYPES = {'fp16': torch.float16, 'bf16': torch.bfloat16, 'fp32': torch.float32}
_DTYPE_NAMES = {torch.float32: 'fp32', torch.float16: 'fp16', torch.bfloat16: 'bf16'}
# Stage options that do not change the stored values (where things are cached, gradients, input
# checks, dropping the unused tail, the levels' resize for forward()); every other option is recorded.
# The fusion stage only acts in forward(), which extraction does not call.
_NOT_RECORDED = {'image.strict', 'image.resize_features', 'vae.cache', 'vae.trainable', 'conditioning.cache',
                 'denoiser.trainable', 'denoiser.prune'}
_RECORDED_STAGES = ('image', 'vae', 'noise', 'conditioning', 'denoiser')


@dataclass
class ExtractionRun:
    """One rank's share of an extraction: the store, and what this rank did.

    Attributes:
        store: The ``FeatureStore`` opened on the output folder (every rank's images, once all finished).
        rank: This process's rank (0 without ``torchrun``).
        world: The number of ranks.
        n_images: Images in the list (all ranks).
        written: Images this rank wrote in this call.
        resumed_from: Images already in the store when this call began (all ranks).
        seconds: Time of the extraction loop on this rank (the backbone's construction excluded).
        forward_seconds: The part of ``seconds`` spent in the backbone's forward.
        total: Images in the finished store's index (rank 0; None on the other ranks).
    """

    store: FeatureStore
    rank: int
    world: int
    n_images: int
    written: int
    resumed_from: int
    seconds: float
    forward_seconds: float
    total: int | None

    def to_dict(self) -> dict[str, Any]:
        """Counts and timings: rank, written, resumed_from, seconds, forward_seconds, total."""
        return dict(rank=self.rank, written=self.written, resumed_from=self.resumed_from, seconds=self.seconds,
                    forward_seconds=self.forward_seconds, total=self.total)


def extract(model: str | None, images: str | Path | Sequence[str | Path], out: str | Path, *,
            activations: ActivationsArg | None = None, pretrained: bool | str | None = None,
            store_dtype: str = 'fp16', aggregate: bool = False, shard_size: int = 32, batch_size: int = 1,
            resume: bool = False, progress: bool = False, backbone: DiffusionBackbone | None = None,
            **backbone_options: Any) -> FeatureStore:
    """Write the features of every image to a resumable ``FeatureStore`` in ``out``.

    Args:
        model: Zoo name (``'sd15'``, ``'shapes_sd_tiny'``, ``'test_sd_tiny'``, ...); may be None when
            ``backbone`` is given.
        images: An image folder (searched recursively), a text file with one image path per line
            (relative paths are relative to the file), or a list of image paths.
        out: The store's folder: new, empty, or holding an earlier run of this call (``resume``).
        activations: Preset name, preset file or layer ids, as ``DiffusionBackbone``'s; None: ``'practical'``.
        pretrained: None (the zoo's weights; random for the test models), True, False (random) or a
            diffusers folder / hub id, as ``DiffusionBackbone``'s. With ``backbone`` it is only recorded
            in the settings: say which weights that backbone holds.
        store_dtype: ``'fp16'``, ``'bf16'`` or ``'fp32'``: the dtype of the stored tensors.
        aggregate: One tensor per image (key ``'aggregate'``): every activation resized (bilinear) to the
            finest one's grid and concatenated on channels.
        shard_size: Images per shard file.
        batch_size: Images per forward; only consecutive images of the same size share one.
        resume: Continue the run in ``out``; refused unless every recorded setting is identical.
        progress: Show a progress bar (rank 0). Nothing is printed otherwise.
        backbone: A built backbone to use instead of building one from ``model`` (then ``activations``
            and ``backbone_options`` must not be given).
        **backbone_options: Further ``DiffusionBackbone`` options: ``t``, ``prompt``, ``ensemble_size``,
            ``image_size``, ``dtype``, ... or stage dicts such as ``noise=dict(t=50, seed=1)``.

    Returns:
        The ``FeatureStore`` on ``out``, holding every image of the list.

    Raises:
        FileNotFoundError: ``images`` is neither a folder nor a list file, or lists missing files.
        ValueError: No images; an unreadable image (named); ``out`` holds another run, or a resumed run's
            settings differ (each named), or ``out`` is a non-empty folder that is not a store; an
            unknown model or option.
        RuntimeError: Launched by ``torchrun`` (``WORLD_SIZE`` > 1) without a process group.
    """
    return run_extraction(model, images, out, activations=activations, pretrained=pretrained,
                          store_dtype=store_dtype, aggregate=aggregate, shard_size=shard_size,
                          batch_size=batch_size, resume=resume, progress=progress, backbone=backbone,
                          **backbone_options).store


def run_extraction(model: str | None, images: str | Path | Sequence[str | Path], out: str | Path, *,
                   activations: ActivationsArg | None = None, pretrained: bool | str | None = None,
                   store_dtype: str = 'fp16', aggregate: bool = False, shard_size: int = 32, batch_size: int = 1,
                   resume: bool = False, progress: bool = False, backbone: DiffusionBackbone | None = None,
                   **backbone_options: Any) -> ExtractionRun:
    """``extract``, returning this rank's counts and timings with the store (``ExtractionRun``).

    Args and Raises: as ``extract``'s.

    Returns:
        An ``ExtractionRun``: ``.store``, ``.written``, ``.resumed_from``, ``.seconds``, ...
    """
    _check_options(model, backbone, activations, backbone_options, store_dtype, shard_size, batch_size)
    rank, world = _rank_and_world()
    barrier = dist.barrier if world > 1 else (lambda: None)
    out = Path(out)
    paths = list_images(images)
    _check_out(out, resume)  # before the model loads: the refusals that need no settings
    if backbone is None:
        backbone = DiffusionBackbone(model, 'practical' if activations is None else activations,
                                     pretrained=default_weights(get_model_spec(model), pretrained),
                                     **backbone_options)
    settings = _settings(backbone, pretrained, images, paths, store_dtype, aggregate)
    _check_settings(out, settings)  # every rank checks before anything is written
    barrier()
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if not (out / SETTINGS).is_file():
            (out / SETTINGS).write_text(json.dumps(settings, indent=1))
        for stale in out.glob('*.tmp'):  # a shard being written when the run was killed
            stale.unlink()
    barrier()

    existing = complete_shards(out)
    done = {record['index'] for shard in existing for record in shard_records(shard)}
    mine = [i for i in range(rank, len(paths), world) if i not in done]
    seq = 1 + max([int(s.stem.rsplit('-', 1)[1]) for s in existing if s.stem.startswith(f'shard-r{rank}-')],
                  default=-1)
    dtype = STORE_DTYPES[store_dtype]
    records, tensors, written, in_forward = [], {}, 0, 0.0
    start = time.perf_counter()
    with torch.no_grad(), tqdm(total=len(mine), unit='img', desc=f'extract (rank {rank})' if world > 1 else 'extract',
                               disable=not progress or rank != 0) as bar:
        for batch in _batches(mine, paths, batch_size):
            tick = time.perf_counter()
            pixels = torch.stack([image for _, image in batch])
            backbone.check_images(pixels)
            acts = backbone.activations(pixels)  # by name: attention maps keep their true width
            in_forward += time.perf_counter() - tick
            for (i, _), image_acts in zip(batch, _per_image(backbone, acts, aggregate)):
                for name, value in image_acts.items():
                    tensors[f'{i}/{name}'] = value.to('cpu', dtype)
                records.append(dict(index=i, path=str(paths[i]), dtype=store_dtype,
                                    shapes={name: list(value.shape) for name, value in image_acts.items()}))
                if len(records) == shard_size:
                    write_shard(out / f'shard-r{rank}-{seq:05d}.safetensors', records, tensors)
                    written, seq, records, tensors = written + len(records), seq + 1, [], {}
            bar.update(len(batch))
        if records:
            write_shard(out / f'shard-r{rank}-{seq:05d}.safetensors', records, tensors)
            written += len(records)
    seconds = time.perf_counter() - start
    barrier()
    total = _write_index(out) if rank == 0 else None
    barrier()  # every rank returns the finished store
    return ExtractionRun(store=FeatureStore(out), rank=rank, world=world, n_images=len(paths), written=written,
                         resumed_from=len(done), seconds=seconds, forward_seconds=in_forward, total=total)


def list_images(images: str | Path | Sequence[str | Path]) -> list[Path]:
    """The image paths of a folder (recursive, sorted), a list file (one path a line) or a list of paths.

    Raises:
        FileNotFoundError: Neither a folder nor a file, or listed images that do not exist.
        ValueError: No images.
    """
    if not isinstance(images, (str, Path)):
        paths = [Path(p) for p in images]
        if not paths:
            raise ValueError('images: the list of image paths is empty')
        origin = 'the list of images'
    else:
        source = Path(images)
        if source.is_dir():
            paths = sorted(p for p in source.rglob('*') if p.suffix.lower() in IMAGE_SUFFIXES)
            if not paths:
                raise ValueError(f'{source} holds no images ({", ".join(IMAGE_SUFFIXES)})')
            return paths
        if not source.is_file():
            raise FileNotFoundError(f'images: {source} is neither an image folder nor a list file')
        lines = [line.strip() for line in source.read_text().splitlines() if line.strip()]
        paths = [p if p.is_absolute() else source.parent / p for p in map(Path, lines)]
        if not paths:
            raise ValueError(f'{source} lists no images')
        origin = str(source)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f'{origin} names images that do not exist: {missing[:5]}'
                                + (f' and {len(missing) - 5} more' if len(missing) > 5 else ''))
    return paths


def _check_options(model: str | None, backbone: DiffusionBackbone | None, activations: Any,
                   backbone_options: dict[str, Any], store_dtype: str, shard_size: int, batch_size: int) -> None:
    if store_dtype not in STORE_DTYPES:
        raise ValueError(f'store_dtype must be one of {sorted(STORE_DTYPES)}; got {store_dtype!r}')
    for name, value in (('shard_size', shard_size), ('batch_size', batch_size)):
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise ValueError(f'{name} must be a positive integer; got {value!r}')
    if backbone is None:
        if model is None:
            raise ValueError('extract needs a zoo model name, or a built backbone as backbone=')
        return
    if model is not None and model != backbone.spec.name:
        raise ValueError(f'model {model!r} differs from the given backbone\'s {backbone.spec.name!r}')
    given = (['activations'] if activations is not None else []) + sorted(backbone_options)
    if given:
        raise ValueError(f'with a built backbone= the backbone options are its own; remove {given}')


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    world = int(os.environ.get('WORLD_SIZE', 1))
    if world > 1:
        raise RuntimeError(f'launched as one of {world} processes (WORLD_SIZE) but no process group is '
                           'initialised: call torch.distributed.init_process_group() before extract(), or '
                           'run the command (torchrun ... tools/extract.py), which does.')
    return 0, 1


def _check_out(out: Path, resume: bool) -> None:
    """Refuse a folder holding another run (unless resumed), a file, or a non-empty folder that is no store."""
    settings_file = out / SETTINGS
    if settings_file.is_file():
        if not resume:
            raise ValueError(f'{out} holds an earlier run ({settings_file}); pass resume=True (--resume) to '
                             'continue it with the same settings, or choose another output folder.')
    elif out.exists() and not out.is_dir():
        raise ValueError(f'{out} is a file, not a folder; choose another output folder.')
    elif out.is_dir() and any(out.iterdir()):
        raise ValueError(f'{out} is not empty and holds no feature store ({SETTINGS}); choose another output folder.')


def _check_settings(out: Path, settings: dict[str, Any]) -> None:
    """A resumed run: every recorded setting must be identical; name each that differs."""
    settings_file = out / SETTINGS
    if not settings_file.is_file():
        return
    earlier = json.loads(settings_file.read_text())
    differ = {k: (earlier.get(k), settings.get(k)) for k in settings.keys() | earlier.keys()
              if earlier.get(k) != settings.get(k)}
    if differ:
        raise ValueError(f'resume: {out} was written with other settings: ' +
                         '; '.join(f'{k}: {_short(a)} there, {_short(b)} now' for k, (a, b) in sorted(differ.items())))


def _short(value: Any, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + '...'


def _settings(backbone: DiffusionBackbone, pretrained: bool | str | None, images: str | Path | Sequence[str | Path],
              paths: list[Path], store_dtype: str, aggregate: bool) -> dict[str, Any]:
    """Everything that decides the stored values; a resumed run must match it exactly (JSON values)."""
    source = (str(Path(images).resolve()) if isinstance(images, (str, Path))
              else [str(p.resolve()) for p in paths])
    record = dict(model=backbone.spec.name, weights=default_weights(backbone.spec, pretrained),
                  levels=[list(level) for level in backbone.levels],
                  dtype=_DTYPE_NAMES.get(backbone.dtype, str(backbone.dtype)), channels_last=backbone.channels_last,
                  **_stage_settings(backbone.stages), store_dtype=store_dtype, aggregate=aggregate, images=source,
                  n_images=len(paths), diffbackbones=__version__)
    return json.loads(json.dumps(record, default=str))  # as read back from settings.json (tuples -> lists)


def _stage_settings(stages: Stages) -> dict[str, Any]:
    """``{'noise.t': 50, 'noise.seed': 0, ...}``: each stage's variant and options that decide the values."""
    record = {}
    for kind in _RECORDED_STAGES:
        stage = getattr(stages, kind)
        record[f'{kind}.type'] = next((name for name, cls in STAGE_VARIANTS[kind].items() if type(stage) is cls),
                                      type(stage).__name__)
        for field in dataclasses.fields(stage):
            if field.init and f'{kind}.{field.name}' not in _NOT_RECORDED:
                record[f'{kind}.{field.name}'] = getattr(stage, field.name)
    return record


def _per_image(backbone: DiffusionBackbone, acts: dict[str, torch.Tensor], aggregate: bool
               ) -> list[dict[str, torch.Tensor]]:
    """Per image of the batch: {activation: (C, h, w)} in level order (or {'aggregate': ...})."""
    names = [n for level in backbone.levels for n in level]
    if aggregate:
        size = acts[names[0]].shape[-2:]  # the finest level comes first
        joined = torch.cat([F.interpolate(acts[n].float(), size=size, mode='bilinear', align_corners=False)
                            if acts[n].shape[-2:] != size else acts[n].float() for n in names], dim=1)
        return [{'aggregate': image} for image in joined]
    return [{n: acts[n][i] for n in names} for i in range(acts[names[0]].shape[0])]


def _batches(indices: list[int], paths: list[Path], size: int) -> Iterator[list[tuple[int, torch.Tensor]]]:
    """Consecutive images of equal size, at most ``size`` at a time."""
    batch, shape = [], None
    for i in indices:
        image = read_image(paths[i])
        if batch and (len(batch) == size or image.shape != shape):
            yield batch
            batch = []
        batch.append((i, image))
        shape = image.shape
    if batch:
        yield batch


def _write_index(out: Path) -> int:
    records = []
    for shard in complete_shards(out):
        records += [dict(record, shard=shard.name) for record in shard_records(shard)]
    records.sort(key=lambda r: r['index'])
    tmp = out / (INDEX + '.tmp')
    tmp.write_text(json.dumps({'images': records}, indent=1))
    os.replace(tmp, out / INDEX)
    return len(records)
