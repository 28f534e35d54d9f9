"""Write the embedded correspondence set (shapes pairs with known similarity transforms) in SPair-71k's layout.

    python tools/make_correspondence.py data/shapes-pairs [--train 150 --val 30 --test 30]
    python tools/correspondence.py --model test_sd_tiny --data data/shapes-pairs
"""
import argparse

from diffbackbones.correspondence.synthetic import make_correspondence_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('root', nargs='?', default='data/shapes-pairs')
    parser.add_argument('--train', type=int, default=150, help='pairs in PairAnnotation/trn')
    parser.add_argument('--val', type=int, default=30)
    parser.add_argument('--test', type=int, default=30)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    root = make_correspondence_dataset(args.root, args.train, args.val, args.test, seed=args.seed)
    print(f'shapes pairs ready in {root} ({args.train} trn / {args.val} val / {args.test} test pairs, SPair-71k layout)')


if __name__ == '__main__':
    main()
