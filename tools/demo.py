"""The main job (`make demo`): one segmentation recipe on the shipped model's features and on random ones.

    python tools/demo.py                                   # the demo config on data/shapes, work_dirs/demo
    python tools/demo.py CONFIG --data DIR --work-dir DIR --iters 100

Trains the config twice with a real mmengine Runner (shipped weights; seeded random weights with latents
rescaled to unit variance), prints one table of val mIoU and per-class IoU, and draws one picture per val
image: input | ground truth | trained | random. From Python:
``diffbackbones.integrations.mmseg.demo.run_demo``.
"""
import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from diffbackbones.data.shapes import SHAPES_PALETTE, make_shapes_dataset
from diffbackbones.integrations.mmseg.demo import comparison_table, draw_comparisons, run_demo
from diffbackbones.utils.pictures import stack_rows

DEMO = (Path(__file__).resolve().parents[1] / 'configs' / 'toy' /
        'upernet_shapes-sd-tiny-practical_1xb8-300_shapes-128x128.py')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', nargs='?', default=str(DEMO),
                        help='an mmseg config on the shapes set (default: the demo)')
    parser.add_argument('--data', default='data/shapes', help='the shapes set (written there first when missing)')
    parser.add_argument('--work-dir', type=Path, default=Path('work_dirs/demo'))
    parser.add_argument('--iters', type=int, default=None, help="training iterations (default: the config's 300)")
    parser.add_argument('--readme-picture', type=Path, default=None,
                        help='also stack the first four pictures (val images in order, none picked) into this '
                             'file: the README shows docs/images/demo.png')
    args = parser.parse_args()

    if not Path(args.data).exists():  # a set already there (any size) is used as it is
        make_shapes_dataset(args.data)
    runs = run_demo(args.config, args.data, args.work_dir, iters=args.iters)
    pictures = draw_comparisons(runs, args.data, args.work_dir / 'pictures', SHAPES_PALETTE)
    if args.readme_picture:
        Image.fromarray(stack_rows([np.asarray(Image.open(p)) for p in pictures[:4]])).save(args.readme_picture)
    print(f'\nval mIoU and IoU per class (%), {Path(args.config).name}, same recipe and seeds, only the '
          f'diffusion weights differ:\n\n{comparison_table(runs)}\n')
    print(f'{len(pictures)} pictures (input | ground truth | trained | random) in {args.work_dir / "pictures"}')


if __name__ == '__main__':
    main()
