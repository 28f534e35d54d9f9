"""``diffbackbones correspondence``, as a script in the source tree (same flags): see
``diffbackbones correspondence --help``; from Python, ``diffbackbones.evaluate_correspondence``.

    python tools/make_correspondence.py data/shapes-pairs
    python tools/correspondence.py test_sd_tiny --data data/shapes-pairs           # prints the table, writes pictures
    python tools/correspondence.py --preset dift --data data/SPair-71k             # DIFT's zero-shot evaluation
"""
import sys

from diffbackbones.commands.correspondence import main

if __name__ == '__main__':
    main(sys.argv[1:])
