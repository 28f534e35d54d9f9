"""``diffbackbones train-diffusion``, as a script in the source tree (same flags): see its ``--help``.

    python tools/train_diffusion.py --out work_dirs/tiny        # the shipped recipe of shapes_sd_tiny
"""
import sys

from diffbackbones.commands.train_diffusion import main

if __name__ == '__main__':
    main(sys.argv[1:])
