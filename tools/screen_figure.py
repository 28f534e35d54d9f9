"""Screens of several models side by side: DNI, GI and LI along each model's execution order.

    python tools/screen_figure.py diffbackbones/models/weights/shapes_sd_tiny/screening/screen.csv \\
        diffbackbones/models/weights/shapes_flux_tiny/screening/screen.csv --out docs/images/screen-two-models.png

One column per ``screen.csv`` (as ``diffbackbones screen`` writes it), one row per property; the x axis is
the execution order scaled to 0..1 (input to output), so networks of different depths line up. Points are
coloured by activation kind; hollow ones were dropped by the paper's rules.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

from diffbackbones.tasks.screening.screen import CSV_FIELDS, METRICS


def read_screen(path: Path) -> list[dict]:
    with open(path, newline='') as f:
        rows = list(csv.DictReader(f))
    if not rows or not set(CSV_FIELDS) <= set(rows[0]):
        raise SystemExit(f'{path} is not a screen.csv written by diffbackbones screen')
    last = max(int(r['order']) for r in rows) or 1
    for r in rows:
        r['x'] = int(r['order']) / last
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('screens', nargs='+', type=Path, help='screen.csv files, one column each')
    parser.add_argument('--names', nargs='+', help="column titles (default: the folder above each 'screening/')")
    parser.add_argument('--out', type=Path, required=True, help='the PNG to write')
    args = parser.parse_args()
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    screens = [read_screen(p) for p in args.screens]
    names = args.names or [p.parent.parent.name if p.parent.name == 'screening' else p.parent.name
                           for p in args.screens]
    kinds = sorted({r['kind'] for rows in screens for r in rows})
    colours = {k: plt.get_cmap('tab20')(i % 20) for i, k in enumerate(kinds)}
    fig, axes = plt.subplots(len(METRICS), len(screens), figsize=(6.5 * len(screens), 8), sharex=True,
                             sharey='row', squeeze=False)
    for col, (rows, name) in enumerate(zip(screens, names)):
        for row, (metric, label) in enumerate(METRICS):
            ax = axes[row][col]
            for kind in kinds:
                for kept in (True, False):
                    sel = [r for r in rows if r['kind'] == kind and (r['keep'] == 'True') == kept]
                    if sel:
                        ax.scatter([r['x'] for r in sel], [float(r[metric]) for r in sel], s=12,
                                   color=colours[kind] if kept else 'none', edgecolors=colours[kind],
                                   label=kind if kept and row == 0 else None)
            if col == 0:
                ax.set_ylabel(label)
        axes[0][col].set_title(f'{name}: {len(rows)} activations')
        axes[-1][col].set_xlabel('execution order, input (0) to output (1)')
    handles = {h.get_label(): h for ax in axes[0] for h in ax.collections if not h.get_label().startswith('_')}
    fig.legend(handles.values(), handles.keys(), ncol=min(8, len(handles)), fontsize=7, loc='upper center')
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
