"""``diffbackbones make-shapes``, as a script in the source tree (same flags): see ``diffbackbones make-shapes --help``."""
import sys

from diffbackbones.commands.make_shapes import main

if __name__ == '__main__':
    main(sys.argv[1:])
