"""What the tasks share about their outputs: never writing over an earlier run unasked, and the peak memory
they report."""
from __future__ import annotations

from pathlib import Path

try:
    import resource
except ImportError:  # not on Windows
    resource = None

__all__ = ['refuse_earlier_run', 'peak_rss_gb']


def refuse_earlier_run(marker: str | Path, overwrite: bool, what: str = 'run') -> None:
    """``FileExistsError`` when ``marker`` (the file a task writes) exists and ``overwrite`` is False."""
    if Path(marker).exists() and not overwrite:
        raise FileExistsError(f'{marker} holds an earlier {what}; choose another folder or pass overwrite=True '
                              '(--overwrite).')


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GB (NaN where the platform cannot say)."""
    return float('nan') if resource is None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
