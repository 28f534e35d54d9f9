"""HPatches' own layout, read and checked: ``hpatches-sequences-release/{i_*,v_*}/{1..6}.ppm`` and ``H_1_{2..6}``.

Each sequence holds a reference image ``1.ppm`` and five more; ``H_1_k`` is a text file of three rows of
three numbers, the homography taking pixels of image 1 to pixels of image k. Sequences named ``i_*`` change
the illumination (H is the identity), ``v_*`` the viewpoint. The pairs evaluated are (1, k), k = 2..6.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ['HomographyPair', 'load_hpatches', 'sequences_root', 'KINDS', 'D2NET_EXCLUDED']

KINDS = {'i': 'illumination', 'v': 'viewpoint'}
RELEASE_FOLDER = 'hpatches-sequences-release'
# The 8 sequences over 1600 x 1200 that D2-Net's download script deletes; CAPS and DIFT evaluate the 108 left
# (52 illumination, 56 viewpoint: 540 pairs). The names are spelled as in the release.
D2NET_EXCLUDED = ('i_contruction', 'i_crownnight', 'i_dc', 'i_pencils', 'i_whitebuilding', 'v_artisans',
                  'v_astronautis', 'v_talent')


@dataclass(frozen=True)
class HomographyPair:
    """Image 1 of ``sequence`` and image ``index``, with the true homography between them."""
    sequence: str
    index: int
    source: Path
    target: Path
    homography: np.ndarray = field(repr=False, compare=False)

    @property
    def kind(self) -> str:
        """'illumination' (i_*) or 'viewpoint' (v_*)."""
        return KINDS[self.sequence[0]]

    @property
    def name(self) -> str:
        return f'{self.sequence}/1-{self.index}'


def sequences_root(root: str | Path) -> Path:
    """The folder holding the sequences: ``root`` itself, or its ``hpatches-sequences-release/``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f'no HPatches folder at {root}: give the hpatches-sequences-release folder (or its '
                                'parent), or write the embedded one with `diffbackbones make-correspondence DIR '
                                '--task geometric`')
    for folder in (root, root / RELEASE_FOLDER):
        if folder.is_dir() and any(p.is_dir() and p.name[:2] in ('i_', 'v_') for p in folder.iterdir()):
            return folder
    raise ValueError(f'{root} holds no HPatches sequences: expected folders i_*/ and v_*/ (in it or in its '
                     f'{RELEASE_FOLDER}/), each with 1.ppm ... 6.ppm and H_1_2 ... H_1_6')


def _read_homography(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f'missing homography {path} (three rows of three numbers)')
    try:
        H = np.loadtxt(path, dtype=np.float64)
    except ValueError as e:
        raise ValueError(f'{path} is not a 3 x 3 homography (three rows of three numbers): {e}') from None
    if H.shape != (3, 3) or not np.isfinite(H).all() or abs(np.linalg.det(H)) < 1e-12:
        raise ValueError(f'{path} is not an invertible 3 x 3 homography: shape {H.shape}')
    return H


def _image(folder: Path, index: int) -> Path:
    for suffix in ('.ppm', '.png', '.jpg'):
        if (folder / f'{index}{suffix}').is_file():
            return folder / f'{index}{suffix}'
    raise FileNotFoundError(f'missing image {folder / f"{index}.ppm"}')


def load_hpatches(root: str | Path, kinds: tuple[str, ...] = ('illumination', 'viewpoint'),
                  sequences: list[str] | None = None,
                  exclude: tuple[str, ...] = D2NET_EXCLUDED) -> list[HomographyPair]:
    """The (1, k) pairs of every sequence under ``root`` (sorted by name) of the ``kinds`` asked for, or of
    the ``sequences`` named, leaving out ``exclude`` (by default D2-Net's 8, as CAPS and DIFT do; ``()``
    keeps all 116). Every file is checked to be there; an error names the first that is not."""
    folder = sequences_root(root)
    unknown = set(kinds) - set(KINDS.values())
    if unknown:
        raise ValueError(f'kinds must be among {sorted(KINDS.values())}; got {sorted(unknown)}')
    found = sorted(p for p in folder.iterdir() if p.is_dir() and p.name[:2] in ('i_', 'v_') and p.name not in exclude)
    if sequences is not None:
        missing = set(sequences) - {p.name for p in found}
        if missing:
            raise FileNotFoundError(f'no sequence {sorted(missing)} in {folder}')
        found = [p for p in found if p.name in set(sequences)]
    pairs = []
    for sequence in found:
        if KINDS[sequence.name[0]] not in kinds:
            continue
        source = _image(sequence, 1)
        for k in range(2, 7):
            pairs.append(HomographyPair(sequence.name, k, source, _image(sequence, k),
                                        _read_homography(sequence / f'H_1_{k}')))
    return pairs
