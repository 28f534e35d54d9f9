"""Label-scarce segmentation: the DDPM-seg pixel-classifier protocol (Baranchuk et al. 2022), as the
paper's code runs it (``scarce_segmentation/task-pixel.py`` in Darkbblue/generic-diffusion-feature).

    images + label maps (256 px) -> backbone levels, kept at their native grid (one forward per image)
      -> for each sampled pixel, its bilinear-upsampled 256 x 256 feature, computed on demand
      -> an ensemble of MLP pixel classifiers -> per-model argmax -> majority vote -> mIoU

The upsampled feature maps are never materialised: 30 images x 65,536 pixels x 3,520 channels would be
28 GB in fp32. ``PixelFeatures.gather`` computes exactly what ``F.interpolate(..., 'bilinear')`` would
give at the requested pixels (the same source indices and weights), so training and prediction see the
values full upsampling would (``tests/test_probe.py`` checks both).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from diffbackbones.utils.resample import bilinear_index, gather_bilinear

__all__ = ['find_split', 'label_map_of', 'read_label_map', 'load_pair', 'clean_labels', 'PixelClassifier',
           'PixelFeatures', 'EarlyStop', 'StackedClassifiers', 'train_ensemble', 'predict', 'compute_iou',
           'redraw_split', 'IMAGE_SUFFIXES']

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')
# A label map is looked for under these suffixes, in this order: DDPM-seg keeps STEM.npy beside STEM.png,
# so .npy must win, and the image file itself is never taken for its own label map.
LABEL_SUFFIXES = ('.npy', '.png')


# --- data ---------------------------------------------------------------------------------------

def find_split(root: str | Path, split: str) -> list[tuple[Path, Path]]:
    """(image, label) paths of one split, in DDPM-seg's layout or mmseg's.

    DDPM-seg: ``root/real/{train,test}/NAME.{jpg,png}`` with ``NAME.npy`` beside each image (``root``
    may also be the ``real`` folder itself). mmseg: ``root/img_dir/SPLIT/NAME.*`` and
    ``root/ann_dir/SPLIT/NAME.png``; its ``test`` split falls back to ``val`` when there is no ``test``.
    """
    root = Path(root)
    for ddpm in (root / 'real' / split, root / split):
        if ddpm.is_dir():
            images = sorted(p for p in ddpm.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            pairs = [(p, label_map_of(p, ddpm, ('.npy',))) for p in images]
            break
    else:
        mm_split = split if (root / 'img_dir' / split).is_dir() or split != 'test' else 'val'
        img_dir, ann_dir = root / 'img_dir' / mm_split, root / 'ann_dir' / mm_split
        if not img_dir.is_dir():
            raise FileNotFoundError(
                f'No {split!r} split under {root}: expected {root / "real" / split} (DDPM-seg layout: images with '
                f'same-name .npy label maps) or {img_dir} with {ann_dir} (mmseg layout).')
        images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        pairs = [(p, label_map_of(p, ann_dir, ('.png',))) for p in images]
    if not pairs:
        raise FileNotFoundError(f'The {split!r} split under {root} holds no images ({", ".join(IMAGE_SUFFIXES)}).')
    return pairs


def label_map_of(image: Path, folder: Path, suffixes: Sequence[str] = LABEL_SUFFIXES) -> Path:
    """The label map of ``image`` in ``folder``: ``STEM.npy``, then ``STEM.png`` (``suffixes`` in order), never
    the image file itself, so a folder that holds both (DDPM-seg's layout) gives the ``.npy``."""
    image = Path(image)
    for suffix in suffixes:
        path = Path(folder) / (image.stem + suffix)
        if path.is_file() and not (image.exists() and path.samefile(image)):
            return path
    expected = ' or '.join(image.stem + s for s in suffixes)
    beside = ' (the image itself is not its label map)' if Path(folder).resolve() == image.parent.resolve() else ''
    raise FileNotFoundError(f'{image} has no label map: expected {expected} in {folder}{beside}.')


def read_label_map(path: Path) -> np.ndarray:
    """An (H, W) array of class ids from a ``.npy`` or a single-channel ``.png``."""
    path = Path(path)
    label = np.load(path) if path.suffix == '.npy' else np.asarray(Image.open(path))
    if label.ndim != 2:
        raise ValueError(f'{path}: a label map holds one class id per pixel, (H, W); got shape {label.shape} '
                         '(an RGB picture of the classes is not a label map: save the ids, e.g. as a mode-L PNG).')
    return label


def load_pair(image_path: Path, label_path: Path, resolution: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """An image as a (3, R, R) float tensor in [-1, 1] and its (R, R) int64 labels (nearest resize)."""
    image = Image.open(image_path).convert('RGB')
    label = read_label_map(label_path)
    if label.shape != (image.height, image.width):
        raise ValueError(f'{label_path}: label map of shape {label.shape} does not match its image {image_path} '
                         f'({image.height} x {image.width}); expected one class id per pixel, {image.height} x '
                         f'{image.width}.')
    if image.width != image.height:
        raise ValueError(f'{image_path}: the protocol takes square images (resized to {resolution} x {resolution}); '
                         f'got {image.width} x {image.height}.')
    image = image.resize((resolution, resolution), Image.BILINEAR)
    label = Image.fromarray(label.astype(np.uint8)).resize((resolution, resolution), Image.NEAREST)
    pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 127.5 - 1
    return pixels, torch.from_numpy(np.asarray(label).astype(np.int64))


def clean_labels(label: torch.Tensor, ignore: int = 255, min_pixels: int = 20) -> torch.Tensor:
    """A training label map with every class of 1..min_pixels-1 pixels set to ``ignore`` (DDPM-seg's rule)."""
    label = label.clone()
    classes, counts = torch.unique(label, return_counts=True)
    for c, n in zip(classes.tolist(), counts.tolist()):
        if c != ignore and 0 < n < min_pixels:
            label[label == c] = ignore
    return label


def redraw_split(n_train: int, n_test: int, seed: int) -> tuple[list[int], list[int]]:
    """Indices into the pooled train + test list: a new split of the same sizes (the paper's protocol)."""
    order = torch.randperm(n_train + n_test, generator=torch.Generator().manual_seed(seed)).tolist()
    return order[:n_train], order[n_train:]


# --- features -----------------------------------------------------------------------------------

class PixelFeatures:
    """The backbone levels of N images at their native grids, read as if upsampled to ``out_hw``.

    Args:
        levels: One (N, C_i, h_i, w_i) tensor per level.
        out_hw: The label resolution the features are upsampled to (256 x 256 in the protocol).
    """

    def __init__(self, levels: Sequence[torch.Tensor], out_hw: tuple[int, int]):
        self.levels = [level.float().contiguous() for level in levels]
        self.out_hw = tuple(out_hw)
        self.channels = sum(level.shape[1] for level in self.levels)
        self._tables = [(bilinear_index(level.shape[2], out_hw[0]), bilinear_index(level.shape[3], out_hw[1]))
                        for level in self.levels]

    def __len__(self) -> int:
        return self.levels[0].shape[0]

    @property
    def nbytes(self) -> int:
        return sum(level.numel() * level.element_size() for level in self.levels)

    def gather(self, n: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(B, C) features of pixels (y, x) of images n, as full bilinear upsampling would give them."""
        return torch.cat([gather_bilinear(level, tables, n, y, x) for level, tables in zip(self.levels, self._tables)],
                         dim=1)

    def upsampled(self, n: int) -> torch.Tensor:
        """(C, H, W): image n's features upsampled in full (the reference ``gather`` must equal; tests only)."""
        return torch.cat([F.interpolate(level[n:n + 1], size=self.out_hw, mode='bilinear', align_corners=False)[0]
                          for level in self.levels])


@torch.no_grad()
def extract_levels(backbone: nn.Module, images: Sequence[torch.Tensor], batch_size: int = 1,
                   progress: Callable | None = None) -> list[torch.Tensor]:
    """Run ``backbone`` over images ((3, H, W) each); its levels stacked per level, (N, C, h, w), fp32."""
    chunks: list[list[torch.Tensor]] = []
    for start in (progress or (lambda r: r))(range(0, len(images), batch_size)):
        levels = backbone(torch.stack(list(images[start:start + batch_size])))
        chunks.append([level.float().cpu() for level in levels])
    return [torch.cat(parts) for parts in zip(*chunks)]


# --- classifier ---------------------------------------------------------------------------------

class PixelClassifier(nn.Sequential):
    """DDPM-seg's MLP: Linear(C, 128)-ReLU-BN-Linear(128, 32)-ReLU-BN-Linear(32, K), or 256/128 wide
    when K >= 30; linear weights N(0, 0.02), biases 0 (BatchNorm keeps torch's init, as the original's
    init function only matches ``BatchNorm2d``)."""

    def __init__(self, channels: int, n_classes: int, generator: torch.Generator | None = None):
        wide, narrow = (256, 128) if n_classes >= 30 else (128, 32)
        super().__init__(nn.Linear(channels, wide), nn.ReLU(), nn.BatchNorm1d(wide),
                         nn.Linear(wide, narrow), nn.ReLU(), nn.BatchNorm1d(narrow), nn.Linear(narrow, n_classes))
        for m in self:
            if isinstance(m, nn.Linear):
                with torch.no_grad():
                    m.weight.normal_(0.0, 0.02, generator=generator)
                    m.bias.zero_()


@dataclass
class EarlyStop:
    """The original's stopping rule: after epoch index ``after_epoch`` (its ``if epoch > 3``), count the
    iterations whose batch loss does not beat the best so far (a new best resets the count); stop once
    the count exceeds ``patience``."""

    after_epoch: int = 3
    patience: int = 50
    best: float = math.inf
    count: int = 0

    def step(self, epoch: int, loss: float) -> bool:
        if epoch <= self.after_epoch:
            return False
        if loss < self.best:
            self.best, self.count = loss, 0
        else:
            self.count += 1
        return self.count > self.patience


class StackedClassifiers(nn.Module):
    """M ``PixelClassifier``s evaluated as one batched module: (M, B, C) in, (M, B, K) out.

    Member m computes exactly what ``members[m]`` computes (its weights stacked along dim 0, BatchNorm
    per member with torch's training/eval semantics), so an ensemble trains in one pass per step
    instead of M; ``write_back`` copies the weights back into the member classifiers.
    """

    def __init__(self, members: Sequence[PixelClassifier]):
        super().__init__()
        linears = [[m[i] for i in (0, 3, 6)] for m in members]
        norms = [[m[i] for i in (2, 5)] for m in members]
        self.weights = nn.ParameterList(nn.Parameter(torch.stack([ls[k].weight.detach().T for ls in linears]))
                                        for k in range(3))
        self.biases = nn.ParameterList(nn.Parameter(torch.stack([ls[k].bias.detach()[None] for ls in linears]))
                                       for k in range(3))
        self.norm_weights = nn.ParameterList(nn.Parameter(torch.stack([ns[k].weight.detach()[None] for ns in norms]))
                                             for k in range(2))
        self.norm_biases = nn.ParameterList(nn.Parameter(torch.stack([ns[k].bias.detach()[None] for ns in norms]))
                                            for k in range(2))
        for k in range(2):
            self.register_buffer(f'running_mean{k}', torch.stack([ns[k].running_mean for ns in norms])[:, None].clone())
            self.register_buffer(f'running_var{k}', torch.stack([ns[k].running_var for ns in norms])[:, None].clone())
        self.momentum, self.eps = norms[0][0].momentum, norms[0][0].eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for k in range(3):
            x = torch.baddbmm(self.biases[k], x, self.weights[k])
            if k == 2:
                return x
            x = F.relu(x)
            mean, var = getattr(self, f'running_mean{k}'), getattr(self, f'running_var{k}')
            if self.training:
                batch_mean, batch_var = x.mean(1, keepdim=True), x.var(1, unbiased=False, keepdim=True)
                with torch.no_grad():  # BatchNorm1d's running statistics: unbiased variance, momentum 0.1
                    n = x.shape[1]
                    mean.lerp_(batch_mean, self.momentum)
                    var.lerp_(batch_var * n / (n - 1), self.momentum)
                mean, var = batch_mean, batch_var
            x = (x - mean) / torch.sqrt(var + self.eps) * self.norm_weights[k] + self.norm_biases[k]

    @torch.no_grad()
    def write_back(self, members: Sequence[PixelClassifier], which: Sequence[int] | None = None) -> None:
        for m in range(len(members)) if which is None else which:
            linears, norms = [members[m][i] for i in (0, 3, 6)], [members[m][i] for i in (2, 5)]
            for k, linear in enumerate(linears):
                linear.weight.copy_(self.weights[k][m].T)
                linear.bias.copy_(self.biases[k][m, 0])
            for k, norm in enumerate(norms):
                norm.weight.copy_(self.norm_weights[k][m, 0])
                norm.bias.copy_(self.norm_biases[k][m, 0])
                norm.running_mean.copy_(getattr(self, f'running_mean{k}')[m, 0])
                norm.running_var.copy_(getattr(self, f'running_var{k}')[m, 0])


def train_ensemble(features: PixelFeatures, pixels: torch.Tensor, labels: torch.Tensor, n_classes: int,
                   seeds: Sequence[int], max_epochs: int = 100, batch_size: int = 64, lr: float = 1e-3,
                   max_iters: int | None = None, progress: Callable | None = None
                   ) -> tuple[list[PixelClassifier], list[dict]]:
    """Train one pixel classifier per seed on the labelled pixels (``pixels``: (P, 3) rows of image, y, x).

    Each classifier is DDPM-seg's: its own init and shuffle (from its seed), Adam, cross-entropy,
    batches of ``batch_size`` pixels (the last partial batch dropped, as the original's DataLoader), at
    most ``max_epochs`` epochs, its own ``EarlyStop``. They run stacked (``StackedClassifiers``), one
    batched step for all; a stopped classifier's weights are taken at its stop and no longer change.
    ``max_iters`` caps the iterations (benchmarks). Returns the classifiers (eval mode) and their logs.
    """
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    members = [PixelClassifier(features.channels, n_classes, g) for g in generators]
    stacked = StackedClassifiers(members).train()
    optimizer = torch.optim.Adam(stacked.parameters(), lr=lr, fused=True)  # same Adam, one kernel per tensor
    stops = [EarlyStop() for _ in seeds]
    logs = [dict(epochs=0, iterations=0, early_stopped=False) for _ in seeds]
    active = list(range(len(seeds)))
    per_epoch = len(pixels) // batch_size
    bar = progress(total=per_epoch) if progress else None  # one epoch at a time: how long stopping takes is unknown
    iterations, done = 0, False
    for epoch in range(max_epochs):
        if bar is not None:
            bar.reset()
        orders = torch.stack([torch.randperm(len(pixels), generator=g) for g in generators])
        for start in range(0, per_epoch * batch_size, batch_size):
            batch = orders[:, start:start + batch_size]  # (M, B) pixel rows
            rows = pixels[batch.flatten()]
            x = features.gather(rows[:, 0], rows[:, 1], rows[:, 2]).view(len(seeds), batch_size, -1)
            logits = stacked(x)
            losses = F.cross_entropy(logits.flatten(0, 1), labels[batch.flatten()], reduction='none')
            losses = losses.view(len(seeds), batch_size).mean(1)
            optimizer.zero_grad()
            losses.sum().backward()  # members share no weights: each gets exactly its own gradient
            optimizer.step()
            iterations += 1
            member_losses = losses.tolist()
            for m in list(active):
                logs[m].update(epochs=epoch + 1, iterations=iterations)
                if stops[m].step(epoch, member_losses[m]):
                    logs[m]['early_stopped'] = True
                    stacked.write_back(members, [m])  # its final weights, as of this step
                    active.remove(m)
            if bar is not None:
                bar.update(1)
                if iterations % 50 == 0:
                    mean_loss = sum(member_losses) / len(member_losses)
                    bar.set_postfix(epoch=f'{epoch + 1}/{max_epochs}', loss=f'{mean_loss:.3f}', training=len(active))
            done = not active or (max_iters is not None and iterations >= max_iters)
            if done:
                break
        if done:
            break
    stacked.write_back(members, active)
    if bar is not None:
        bar.close()
    for log, stop in zip(logs, stops):
        log['best_loss'] = stop.best
    return [m.eval() for m in members], logs


@torch.no_grad()
def predict(models: Sequence[nn.Module], features: PixelFeatures, n: int, chunk: int = 4096) -> torch.Tensor:
    """(H, W) labels of image n: each model's argmax per pixel, then the majority vote (ties: the smallest
    class id, as ``torch.mode``)."""
    h, w = features.out_hw
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij')
    ys, xs = ys.flatten(), xs.flatten()
    votes = []
    for start in range(0, h * w, chunk):
        y, x = ys[start:start + chunk], xs[start:start + chunk]
        feats = features.gather(torch.full_like(y, n), y, x)
        votes.append(torch.stack([m(feats).argmax(1) for m in models], dim=1))
    return majority_vote(torch.cat(votes)).view(h, w)


def majority_vote(votes: torch.Tensor) -> torch.Tensor:
    """(P, M) per-model labels -> (P,) the most frequent label (ties: the smallest)."""
    return torch.mode(votes, dim=1).values


def compute_iou(preds: Sequence[torch.Tensor], gts: Sequence[torch.Tensor], n_classes: int,
                ignore: int = 255) -> dict:
    """mIoU as DDPM-seg computes it: intersection and union of each class summed over the whole test set,
    averaged over every class but ``ignore``. A class absent from both predictions and labels counts as
    IoU 0 (the original's choice); ``miou_present`` averages over the classes that occur. Every pixel
    counts, including those labelled ``ignore`` (a prediction there enlarges that class's union).
    """
    classes = [c for c in range(n_classes) if c != ignore]
    inter = {c: 0 for c in classes}
    union = {c: 0 for c in classes}
    for pred, gt in zip(preds, gts):
        for c in classes:
            p, g = pred == c, gt == c
            inter[c] += int((p & g).sum())
            union[c] += int((p | g).sum())
    iou = {c: inter[c] / (1e-8 + union[c]) for c in classes}
    present = [c for c in classes if union[c] > 0]
    return dict(miou=sum(iou.values()) / len(classes),
                miou_present=sum(iou[c] for c in present) / max(len(present), 1),
                iou=iou, intersection=inter, union=union)
