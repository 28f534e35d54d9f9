"""Write the embedded synthetic "shapes" segmentation set in mmseg's layout.

    python tools/make_shapes.py data/shapes [--train 200 --val 50]
    python tools/make_shapes.py data/shapes-geometry --variant geometry   # only the outline names the class
"""
import argparse

from diffbackbones.segmentation.shapes import VARIANTS, make_shapes_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('root', nargs='?', default='data/shapes')
    parser.add_argument('--train', type=int, default=200, help='training images')
    parser.add_argument('--val', type=int, default=50, help='validation images')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--variant', choices=VARIANTS, default='texture',
                        help='texture: class-specific texture and hue; geometry: appearance independent of the class')
    args = parser.parse_args()
    root = make_shapes_dataset(args.root, args.train, args.val, seed=args.seed, variant=args.variant)
    print(f'shapes dataset ({args.variant}) ready in {root} ({args.train} train / {args.val} val images)')


if __name__ == '__main__':
    main()
