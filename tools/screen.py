"""``diffbackbones screen``, as a script in the source tree (same flags): see ``diffbackbones screen --help``.

    python tools/screen.py test_sd_tiny --images data/shapes/img_dir/val --labels data/shapes/ann_dir/val --out work_dirs/screen
"""
import sys

from diffbackbones.commands.screen import main

if __name__ == '__main__':
    main(sys.argv[1:])
