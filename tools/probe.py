"""``diffbackbones probe``, as a script in the source tree (same flags): see ``diffbackbones probe --help``.

    python tools/make_shapes.py data/shapes-ddpm --layout ddpm-seg
    python tools/probe.py test_sd_tiny --data data/shapes-ddpm

From Python: ``diffbackbones.evaluate_probe``.
"""
import sys

from diffbackbones.commands.probe import main

if __name__ == '__main__':
    main(sys.argv[1:])
