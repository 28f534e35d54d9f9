"""The paper's three screening properties as numbers, computed from S noise seeds of one image.

For an activation seen under S seeds of diffusion noise at the same t, x: (S, C, h, w), every channel
is standardised with the seed mean's spatial mean and std (z = (x - mu_c) / sd_c), then:

- **DNI, diffusion-noise index** = Vn / (Vn + Vs): Vn the across-seed variance (unbiased, mean over
  pixels), Vs the spatial variance of the seed mean minus its share of Vn (Vn / S), per channel,
  averaged over channels. 1: the activation is noise; 0: the same map under every seed. DNI-low and
  DNI-high split both variances at a quarter of Nyquist (0.125 cycles per pixel) in the power spectrum
  (the constant component left out of both).
- **GI, granularity index**: the spectral centroid, in cycles per image, of the seed mean's power
  spectrum summed over channels (Hann window; sides under 4 unwindowed) after subtracting the noise's
  share (the across-seed power / S). Cycles per image, so comparable across resolutions.
- **LI, locality index** (with a label map): the mean cosine similarity of a pixel to nearby pixels
  of another class minus its mean similarity to far pixels of the same class (near: within 1/8 of the
  grid's longer side, at least one pixel; far: beyond 1/2), over pixels that have both, on the
  standardised seed mean. > 0: the features say where (position); < 0: they say what (class).

``ActivationStats`` accumulates these over images; ``select_candidates`` applies the paper's rules.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ['standardise', 'noise_indices', 'granularity_index', 'locality_index', 'pca_rgb', 'screen_samples',
           'ActivationStats', 'select_candidates', 'spearman', 'INCREMENT_KINDS', 'QK_KINDS']

INCREMENT_KINDS = ('res-increment', 'ffn-inner', 'self-v')   # the paper: noisy increments, never features
QK_KINDS = ('self-q', 'self-k', 'cross-q')
QUARTER_NYQUIST = 0.125  # cycles per pixel


def standardise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """z (S, C, h, w) and its seed mean (C, h, w), per channel by the seed mean's spatial mean and std."""
    mean = x.mean(0)
    mu = mean.mean((1, 2), keepdim=True)
    sd = mean.std((1, 2), unbiased=False, keepdim=True)
    sd = sd.clamp_min(1e-6 * float(x.abs().max()) + 1e-30)  # a flat seed mean: its noise dominates
    return (x - mu) / sd, (mean - mu) / sd


def _radius(h: int, w: int, per_image: bool) -> torch.Tensor:
    fy, fx = torch.fft.fftfreq(h), torch.fft.fftfreq(w)
    if per_image:
        fy, fx = fy * h, fx * w
    return (fy[:, None] ** 2 + fx[None, :] ** 2).sqrt()


def noise_indices(z: torch.Tensor, zbar: torch.Tensor) -> dict[str, float]:
    """DNI (spatial), DNI-low and DNI-high (spectral bands) of standardised samples."""
    s, _, h, w = z.shape
    dev = z - zbar
    vn = dev.pow(2).sum(0).mean((1, 2)) / (s - 1)                        # (C,)
    vs = (zbar.pow(2).mean((1, 2)) - vn / s).clamp_min(0)               # zbar has zero spatial mean
    out = {'dni': float((vn / (vn + vs).clamp_min(1e-30)).mean())}
    pn = torch.fft.fft2(dev).abs().pow(2).sum(0) / (s - 1)               # (C, h, w)
    pm = torch.fft.fft2(zbar).abs().pow(2)
    ps = pm - pn / s
    radius = _radius(h, w, per_image=False)
    for band, mask in (('dni_low', (radius > 0) & (radius <= QUARTER_NYQUIST)), ('dni_high', radius > QUARTER_NYQUIST)):
        if not mask.any():
            out[band] = float('nan')
            continue
        n, sig = pn[:, mask].sum(1), ps[:, mask].sum(1).clamp_min(0)
        out[band] = float((n / (n + sig).clamp_min(1e-30)).mean())
    return out


def granularity_index(z: torch.Tensor, zbar: torch.Tensor) -> float:
    """Spectral centroid (cycles per image) of the seed mean's noise-corrected power spectrum."""
    s, _, h, w = z.shape
    window = torch.ones(h, w)
    if h >= 4 and w >= 4:
        window = torch.hann_window(h, periodic=False)[:, None] * torch.hann_window(w, periodic=False)[None, :]
    mean_power = torch.fft.fft2(zbar * window).abs().pow(2).sum(0)
    noise_power = torch.fft.fft2((z - zbar) * window).abs().pow(2).sum((0, 1)) / max(s - 1, 1)
    signal = (mean_power - noise_power / s).clamp_min(0)
    radius = _radius(h, w, per_image=True)
    signal[0, 0] = 0
    total = float(signal.sum())
    return float((signal * radius).sum()) / total if total > 0 else float('nan')


def locality_index(features: torch.Tensor, labels: torch.Tensor, ignore: int = 255, max_anchors: int = 2048,
                   seed: int = 0) -> float:
    """Nearby-other-class similarity minus far-same-class similarity; ``features`` (C, h, w), ``labels``
    (h, w) on the same grid. NaN when no pixel has both kinds of neighbour."""
    c, h, w = features.shape
    vectors = F.normalize(features.reshape(c, -1).T.float(), dim=1)      # (h*w, C)
    flat = labels.reshape(-1)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij')
    coords = torch.stack([ys.reshape(-1), xs.reshape(-1)], 1).float()
    valid = (flat != ignore).nonzero().squeeze(1)
    if len(valid) < 2:
        return float('nan')
    anchors = valid
    if len(anchors) > max_anchors:
        anchors = anchors[torch.randperm(len(anchors), generator=torch.Generator().manual_seed(seed))[:max_anchors]]
    side = max(h, w)
    near, far = max(side / 8, 1.0), side / 2
    distance = torch.cdist(coords[anchors], coords[valid])
    same = flat[anchors][:, None] == flat[valid][None, :]
    sims = vectors[anchors] @ vectors[valid].T
    near_other = (distance <= near) & ~same & (distance > 0)
    far_same = (distance >= far) & same
    both = near_other.any(1) & far_same.any(1)
    if not both.any():
        return float('nan')
    mean_near = (sims * near_other).sum(1) / near_other.sum(1).clamp_min(1)
    mean_far = (sims * far_same).sum(1) / far_same.sum(1).clamp_min(1)
    return float((mean_near - mean_far)[both].mean())


def pca_rgb(features: torch.Tensor) -> np.ndarray:
    """(h, w, 3) uint8: the first three principal components of the pixels' feature vectors as RGB."""
    c, h, w = features.shape
    x = features.reshape(c, -1).T.double()
    x = x - x.mean(0)
    if min(x.shape) == 0 or not torch.isfinite(x).all():
        return np.zeros((h, w, 3), np.uint8)
    u, sv, _ = torch.linalg.svd(x, full_matrices=False)
    scores = (u[:, :3] * sv[:3]).float()
    if scores.shape[1] < 3:
        scores = F.pad(scores, (0, 3 - scores.shape[1]))
    lo, hi = scores.quantile(0.01, dim=0), scores.quantile(0.99, dim=0)
    rgb = ((scores - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
    return (rgb.reshape(h, w, 3).numpy() * 255).astype(np.uint8)


def screen_samples(x: torch.Tensor, labels: torch.Tensor | None = None, ignore: int = 255,
                   with_pca: bool = False) -> dict:
    """Every screening number of one activation of one image under S >= 2 seeds, x (S, C, h, w)."""
    if x.shape[0] < 2:
        raise ValueError(f'screening needs at least 2 noise seeds per image; got {x.shape[0]}')
    z, zbar = standardise(x.double())
    z, zbar = z.float(), zbar.float()
    out = noise_indices(z, zbar)
    out['gi'] = granularity_index(z, zbar)
    out['li'] = float('nan') if labels is None else locality_index(zbar, labels, ignore)
    if with_pca:
        out['pca'] = pca_rgb(zbar)
    return out


METRICS = ('dni', 'dni_low', 'dni_high', 'gi', 'li')


@dataclass
class ActivationStats:
    """Per-image screening numbers of one activation, averaged over images (NaNs left out)."""
    values: dict = field(default_factory=lambda: {m: [] for m in METRICS})
    pca: np.ndarray | None = None

    def add(self, numbers: dict) -> None:
        for m in METRICS:
            self.values[m].append(numbers[m])
        if self.pca is None and 'pca' in numbers:
            self.pca = numbers['pca']

    def mean(self, metric: str) -> float:
        finite = [v for v in self.values[metric] if not math.isnan(v)]
        return float(np.mean(finite)) if finite else float('nan')


def select_candidates(rows: list[dict], dni_max: float = 0.5, li_max: float = 0.05) -> list[dict]:
    """The paper's qualitative rules, made numeric. Each row (name, kind, stride, dni, li, ...) gets
    ``keep`` and ``reason``:

    1. increments (``res-increment``, ``ffn-inner``, ``self-v``) are dropped;
    2. DNI > ``dni_max`` is dropped, unless LI > ``li_max`` says the structure is locality (position);
    3. q/k (``self-q``, ``self-k``, ``cross-q``) with LI > ``li_max`` are dropped where a clean
       (DNI <= ``dni_max``) activation of another kind exists at the same stride.
    """
    out = []
    clean_by_stride: dict[int, bool] = {}
    for row in rows:
        if row['kind'] not in INCREMENT_KINDS and row['kind'] not in QK_KINDS and row['dni'] <= dni_max:
            clean_by_stride[row['stride']] = True
    for row in rows:
        li = row['li']
        local = not math.isnan(li) and li > li_max
        if row['kind'] in INCREMENT_KINDS:
            keep, reason = False, f'{row["kind"]} is an increment'
        elif math.isnan(row['dni']) or (row['dni'] > dni_max and not local):
            keep, reason = False, f'DNI {row["dni"]:.2f} > {dni_max}'
        elif row['kind'] in QK_KINDS and local and clean_by_stride.get(row['stride']):
            keep, reason = False, f'{row["kind"]} with LI {li:.2f} > {li_max}; a clean activation exists at stride {row["stride"]}'
        else:
            keep, reason = True, 'kept'
        out.append(dict(row, keep=keep, reason=reason))
    return out


def spearman(a, b) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN pairs left out."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = ~(np.isnan(a) | np.isnan(b))
    a, b = a[ok], b[ok]
    if len(a) < 3:
        return float('nan')

    def ranks(v):
        order = v.argsort(kind='stable')
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=float)
        for value in np.unique(v):  # ties share their mean rank
            tie = v == value
            r[tie] = r[tie].mean()
        return r
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float('nan')
    return float(np.corrcoef(ra, rb)[0, 1])
