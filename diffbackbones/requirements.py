"""The oldest versions of the core libraries the test suite has passed on: ``setup.py`` declares them, and
``import diffbackbones`` checks them first, so an older install fails at once with the version it needs
instead of deep inside diffusers or timm.

A bound here is a claim that a full ``make test`` passed on it; lower one only after such a run (see the
Install notes page for the versions tried)."""
from __future__ import annotations

import re
from importlib import metadata

__all__ = ['MINIMUM_VERSIONS', 'check_versions']

# distribution name -> the oldest version a full test run passed on
MINIMUM_VERSIONS = {
    'torch': '2.14.1',
    'diffusers': '0.42.1',
    'transformers': '5.25.0',
    'timm': '1.0.31',
    'peft': '0.21.2',  # LoRA adapters (lora=), through diffusers' own loaders
    'accelerate': '1.16.0',  # low_cpu_mem_usage loading of real weights
}


def _release(version: str) -> tuple[int, ...]:
    """(2, 14, 1) of '2.14.1+cpu' or '0.43.0.dev0': the leading numbers, enough to order releases."""
    return tuple(int(part) for part in re.findall(r'\d+', version.split('+')[0].split('.dev')[0])[:3])


def check_versions(minimums: dict[str, str] | None = None) -> None:
    """Raise ``ImportError`` naming every installed core library older than its minimum, and the fix."""
    too_old = []
    for name, needed in (minimums or MINIMUM_VERSIONS).items():
        try:
            found = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # not installed at all: its own import says so, where it is used
        if _release(found) < _release(needed):
            too_old.append((name, needed, found))
    if too_old:
        listed = ', '.join(f'{name}>={needed} (found {found})' for name, needed, found in too_old)
        upgrade = ' '.join(f"'{name}>={needed}'" for name, needed, _ in too_old)
        advice = f'upgrade with: pip install -U {upgrade}'
        if any(name == 'torch' for name, _, _ in too_old):  # a plain upgrade may pull a multi-GB CUDA build
            advice += " (for torch, take the build for your machine from PyTorch's install selector)"
        raise ImportError(f'diffbackbones needs {listed}; {advice}')
