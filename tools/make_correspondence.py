"""``diffbackbones make-correspondence``, as a script in the source tree (same flags): see ``diffbackbones make-correspondence --help``."""
import sys

from diffbackbones.commands.make_correspondence import main

if __name__ == '__main__':
    main(sys.argv[1:])
