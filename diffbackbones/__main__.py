"""``python -m diffbackbones COMMAND ...``: the ``diffbackbones`` command without its console script (e.g.
under ``torchrun --nproc_per_node=2 -m diffbackbones extract ...``)."""
import sys

from .commands import main

sys.exit(main())
