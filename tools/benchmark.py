"""``diffbackbones benchmark``, as a script in the source tree (same flags): see ``diffbackbones benchmark --help``.

    python tools/benchmark.py sd15 --preset practical --size 256
"""
import sys

from diffbackbones.commands.benchmark import main

if __name__ == '__main__':
    main(sys.argv[1:])
