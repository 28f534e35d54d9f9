"""``diffbackbones generate-labelled``, as a script in the source tree (same flags): see ``diffbackbones generate-labelled --help``.

    python tools/generate_labelled.py --out work_dirs/labelled

From Python: ``diffbackbones.tasks.generation.generate_labelled``; ``diffbackbones.capture_generation``.
"""
import sys

from diffbackbones.commands.generate_labelled import main

if __name__ == '__main__':
    main(sys.argv[1:])
