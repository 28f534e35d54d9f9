"""``diffbackbones extract``, as a script in the source tree (same flags): see ``diffbackbones extract --help``.

    python tools/extract.py shapes_sd_tiny --images data/shapes/img_dir/val --out work_dirs/features
    python tools/extract.py ... --resume                        # after a kill: continues where it stopped
    torchrun --nproc_per_node=2 tools/extract.py ...            # images split across ranks (gloo on CPU)

From Python: ``diffbackbones.extract(model, images, out, ...)`` (a ``FeatureStore``).
"""
import sys

from diffbackbones.commands.extract import main

if __name__ == '__main__':
    main(sys.argv[1:])
