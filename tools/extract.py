"""Extract a backbone's features for a folder of images to disk (safetensors shards), resumable.

    python tools/extract.py --model shapes_sd_tiny --images data/shapes/img_dir/val --out work_dirs/features
    python tools/extract.py ... --resume                        # after a kill: continues where it stopped
    torchrun --nproc_per_node=2 tools/extract.py ...            # images split across ranks (gloo on CPU)

Each image's activations are stored one tensor per activation, on the working size's grid (``--aggregate``:
every activation resized to the finest one's grid and concatenated into one tensor, as the paper code's
``--aggregate_output``), fp16 by
default, in shards of ``--shard-size`` images written atomically (temporary file, then rename). The
store's ``settings.json`` records every backbone setting; a folder holding another run is refused
(``--resume`` continues a run with identical settings, and names any setting that differs).

    from diffbackbones import FeatureStore
    store = FeatureStore('work_dirs/features')      # lazy: by image, by activation
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

import diffbackbones
from diffbackbones import DiffusionBackbone, get_model_spec
from diffbackbones.cli import IMAGE_SUFFIXES, activations_option, pretrained_option, read_image
from diffbackbones.store import INDEX, SETTINGS, complete_shards, shard_records, write_shard

STORE_DTYPES = {'fp16': torch.float16, 'bf16': torch.bfloat16, 'fp32': torch.float32}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', required=True, help='zoo name (sd15, sdxl, shapes_sd_tiny, test_sd_tiny, ...)')
    parser.add_argument('--activations', default='practical', help='preset name or comma-separated layer ids')
    parser.add_argument('--images', required=True, help='an image folder, or a text file with one image path per line')
    parser.add_argument('--out', required=True, help='the store folder')
    parser.add_argument('--weights', default=None,
                        help="'random', a local diffusers folder or hub id; omit: the zoo's weights (random for test models)")
    parser.add_argument('--t', type=int, default=None, help="timestep (default: the model's: 50, or 184 for flow-matching models)")
    parser.add_argument('--prompt', default='')
    parser.add_argument('--ensemble', type=int, default=1)
    parser.add_argument('--image-size', type=int, default=None, help='working size (default: each image as it is)')
    parser.add_argument('--dtype', default='fp32', help='backbone dtype')
    parser.add_argument('--store-dtype', choices=sorted(STORE_DTYPES), default='fp16')
    parser.add_argument('--aggregate', action='store_true', help='one tensor per image: levels at the finest grid')
    parser.add_argument('--shard-size', type=int, default=32, help='images per shard')
    parser.add_argument('--batch-size', type=int, default=1, help='images per forward (same-size neighbours only)')
    parser.add_argument('--resume', action='store_true', help='continue a run in --out with identical settings')
    return parser.parse_args(argv)


def list_images(source: str) -> list[Path]:
    path = Path(source)
    if path.is_dir():
        images = sorted(p for p in path.rglob('*') if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise SystemExit(f'{path} holds no images ({", ".join(IMAGE_SUFFIXES)})')
        return images
    if path.is_file():
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        images = [p if p.is_absolute() else path.parent / p for p in map(Path, lines)]
        missing = [str(p) for p in images if not p.is_file()]
        if missing:
            raise SystemExit(f'{path} lists images that do not exist: {missing[:5]}')
        if not images:
            raise SystemExit(f'{path} lists no images')
        return images
    raise SystemExit(f'--images {source}: neither an image folder nor a list file')


def build_backbone(args) -> DiffusionBackbone:
    spec = get_model_spec(args.model)
    return DiffusionBackbone(args.model, activations_option(args.activations),
                             pretrained=pretrained_option(spec, args.weights), t=args.t, prompt=args.prompt,
                             ensemble_size=args.ensemble, image_size=args.image_size, dtype=args.dtype)


def run_settings(args, backbone: DiffusionBackbone, images: list[Path]) -> dict:
    """Everything that decides the stored values; a resumed run must match it exactly."""
    return dict(model=args.model, weights=args.weights, levels=[list(level) for level in backbone.levels],
                t=backbone.stages.noise.t, prompt=args.prompt, ensemble=args.ensemble, noise_seed=backbone.stages.noise.seed,
                image_size=args.image_size, dtype=args.dtype, store_dtype=args.store_dtype, aggregate=args.aggregate,
                images=str(Path(args.images).resolve()), n_images=len(images),
                diffbackbones=diffbackbones.__version__)


def check_out(out: Path, settings: dict, resume: bool) -> None:
    """Refuse a folder holding another run (or anything else); on --resume name every setting that differs."""
    settings_file = out / SETTINGS
    if settings_file.is_file():
        if not resume:
            raise SystemExit(f'{out} holds an earlier run ({settings_file}); pass --resume to continue it with '
                             'the same settings, or choose another --out.')
        earlier = json.loads(settings_file.read_text())
        differ = {k: (earlier.get(k), settings.get(k)) for k in settings.keys() | earlier.keys()
                  if earlier.get(k) != settings.get(k)}
        if differ:
            raise SystemExit(f'--resume: {out} was written with other settings: ' +
                             '; '.join(f'{k}: {a!r} there, {b!r} now' for k, (a, b) in sorted(differ.items())))
    elif out.is_dir() and any(out.iterdir()):
        raise SystemExit(f'{out} is not empty and holds no feature store ({SETTINGS}); choose another --out.')


def per_image(backbone: DiffusionBackbone, acts: dict[str, torch.Tensor], aggregate: bool) -> list[dict[str, torch.Tensor]]:
    """Per image of the batch: {activation: (C, h, w)} in level order (or {'aggregate': ...})."""
    names = [n for level in backbone.levels for n in level]
    if aggregate:
        size = acts[names[0]].shape[-2:]   # the finest level comes first
        joined = torch.cat([F.interpolate(acts[n].float(), size=size, mode='bilinear', align_corners=False)
                            if acts[n].shape[-2:] != size else acts[n].float() for n in names], dim=1)
        return [{'aggregate': image} for image in joined]
    return [{n: acts[n][i] for n in names} for i in range(acts[names[0]].shape[0])]


def batches(indices: list[int], images: list[Path], size: int):
    """Consecutive images of equal size, at most ``size`` at a time."""
    batch, shape = [], None
    for i in indices:
        image = read_image(images[i])
        if batch and (len(batch) == size or image.shape != shape):
            yield batch
            batch = []
        batch.append((i, image))
        shape = image.shape
    if batch:
        yield batch


def write_index(out: Path) -> int:
    records = []
    for shard in complete_shards(out):
        records += [dict(record, shard=shard.name) for record in shard_records(shard)]
    records.sort(key=lambda r: r['index'])
    tmp = out / (INDEX + '.tmp')
    tmp.write_text(json.dumps({'images': records}, indent=1))
    os.replace(tmp, out / INDEX)
    return len(records)


def extract(args, backbone: DiffusionBackbone | None = None) -> dict:
    """Run the extraction (one rank of it under torchrun); returns counts and timings."""
    world = int(os.environ.get('WORLD_SIZE', 1))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group('nccl' if torch.cuda.is_available() else 'gloo')
    rank = dist.get_rank() if world > 1 else 0
    barrier = dist.barrier if world > 1 else (lambda: None)
    out = Path(args.out)
    images = list_images(args.images)
    backbone = backbone or build_backbone(args)
    settings = run_settings(args, backbone, images)
    check_out(out, settings, args.resume)   # every rank checks before anything is written
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
    mine = [i for i in range(rank, len(images), world) if i not in done]
    seq = 1 + max([int(s.stem.rsplit('-', 1)[1]) for s in existing if s.stem.startswith(f'shard-r{rank}-')], default=-1)
    store_dtype = STORE_DTYPES[args.store_dtype]
    records, tensors, written, in_forward = [], {}, 0, 0.0
    start = time.perf_counter()
    with torch.no_grad(), tqdm(total=len(mine), unit='img', desc=f'extract (rank {rank})' if world > 1 else 'extract',
                               disable=rank != 0) as bar:
        for batch in batches(mine, images, args.batch_size):
            tick = time.perf_counter()
            pixels = torch.stack([image for _, image in batch])
            backbone.check_images(pixels)
            acts = backbone.activations(pixels)   # by name: attention maps keep their true width
            in_forward += time.perf_counter() - tick
            for (i, _), acts in zip(batch, per_image(backbone, acts, args.aggregate)):
                for name, value in acts.items():
                    tensors[f'{i}/{name}'] = value.to('cpu', store_dtype)
                records.append(dict(index=i, path=str(images[i]), dtype=args.store_dtype,
                                    shapes={name: list(value.shape) for name, value in acts.items()}))
                if len(records) == args.shard_size:
                    write_shard(out / f'shard-r{rank}-{seq:05d}.safetensors', records, tensors)
                    written, seq, records, tensors = written + len(records), seq + 1, [], {}
            bar.update(len(batch))
        if records:
            write_shard(out / f'shard-r{rank}-{seq:05d}.safetensors', records, tensors)
            written += len(records)
    seconds = time.perf_counter() - start
    barrier()
    total = write_index(out) if rank == 0 else None
    if rank == 0:
        print(f'{total} / {len(images)} images in {out} ({written} new on rank 0, {len(done)} there before); '
              f'{written / max(seconds, 1e-9):.2f} images/s')
    if world > 1:
        dist.destroy_process_group()
    return dict(rank=rank, written=written, resumed_from=len(done), seconds=seconds, forward_seconds=in_forward,
                total=total)


if __name__ == '__main__':
    extract(parse_args(sys.argv[1:]))
