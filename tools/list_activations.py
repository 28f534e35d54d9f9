"""``diffbackbones list``, as a script in the source tree (same flags): see ``diffbackbones list --help``."""
import sys

from diffbackbones.commands.list_activations import main

if __name__ == '__main__':
    main(sys.argv[1:])
