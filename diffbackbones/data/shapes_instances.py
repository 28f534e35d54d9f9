"""The shapes set for instance segmentation and detection, in COCO's format: every visible shape one instance.

The images are the segmentation set's (the same draws, ``diffbackbones.data.shapes.render_instances``). Each
shape that is still visible after later shapes are drawn over it becomes one instance: its visible pixels as a
run-length-encoded mask (COCO's RLE, from pycocotools; a shape cut in two by another stays one instance), the
tight box around them, and its class (circle, square, triangle; COCO category ids 1, 2, 3). A shape hidden to
fewer than ``MIN_AREA`` pixels is no instance.

    root/train/00000.png, root/val/00000.png
    root/annotations/instances_train.json, root/annotations/instances_val.json

    diffbackbones make-shapes data/shapes-instances --task instances     # 200 train / 50 val images
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from .shapes import SHAPES_CLASSES, SHAPES_PALETTE, render_instances

__all__ = ['INSTANCE_CLASSES', 'INSTANCE_PALETTE', 'MIN_AREA', 'make_instances_dataset', 'coco_annotations']

INSTANCE_CLASSES = SHAPES_CLASSES[1:]   # no background class in COCO's format
INSTANCE_PALETTE = [tuple(c) for c in SHAPES_PALETTE[1:]]
MIN_AREA = 16


def coco_annotations(label: np.ndarray, instances: np.ndarray, image_id: int, first_id: int) -> list[dict]:
    """COCO annotation records of one image's instance map (ids ``first_id``, ``first_id + 1``, ...)."""
    from pycocotools import mask as mask_utils  # with mmdet (the mmseg extra); only this writer needs it

    records = []
    for number in range(1, int(instances.max()) + 1):
        mask = instances == number
        if mask.sum() < MIN_AREA:
            continue
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        kind = int(np.bincount(label[mask]).argmax())   # one class per shape
        records.append(dict(id=first_id + len(records), image_id=image_id, category_id=kind,
                            segmentation=dict(size=[int(v) for v in rle['size']], counts=rle['counts'].decode()),
                            area=float(mask_utils.area(rle)), bbox=[float(v) for v in mask_utils.toBbox(rle)],
                            iscrowd=0))
    return records


def make_instances_dataset(root: str | Path, n_train: int = 200, n_val: int = 50, size: int = 128, seed: int = 0,
                           variant: str = 'texture') -> Path:
    """Write the set under ``root`` (idempotent: an existing complete set is left as it is)."""
    root = Path(root)
    categories = [dict(id=i, name=name) for i, name in enumerate(INSTANCE_CLASSES, 1)]
    for split, count, split_seed in (('train', n_train, seed), ('val', n_val, seed + 1)):
        annotation_file = root / 'annotations' / f'instances_{split}.json'
        if annotation_file.is_file() and len(json.loads(annotation_file.read_text())['images']) == count:
            continue
        (root / split).mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(split_seed)
        images, annotations = [], []
        for i in range(count):
            image, label, instances = render_instances(rng, size, variant)
            Image.fromarray(image).save(root / split / f'{i:05d}.png')
            images.append(dict(id=i, file_name=f'{i:05d}.png', width=size, height=size))
            annotations += coco_annotations(label, instances, i, len(annotations) + 1)
        annotation_file.parent.mkdir(parents=True, exist_ok=True)
        annotation_file.write_text(json.dumps(dict(images=images, annotations=annotations, categories=categories)))
    return root
