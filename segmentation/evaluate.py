"""``python -m segmentation.evaluate``: ``lposs evaluate`` with the same flags, for ``torchrun``::

    torchrun --nproc-per-node 4 -m segmentation.evaluate --dataset voc --data-root /data

The command is :mod:`segmentation.commands.evaluate`, the evaluation library
:mod:`segmentation.evaluation`. The other names this module had are deprecated aliases of theirs.
"""

from __future__ import annotations

import sys

from ._deprecated import alias_getattr
from .commands.evaluate import main

__all__ = ["main"]

__getattr__ = alias_getattr(__name__, {
    "add_evaluate_arguments": "segmentation.commands.evaluate:add_arguments",
    "run_evaluate": "segmentation.commands.evaluate:run",
    "PROG": "segmentation.commands.evaluate:PROG",
    "_Dist": "segmentation.distributed:Distributed",
    "_evaluate_sample": "segmentation.evaluation.loop:evaluate_sample",
})

if __name__ == "__main__":
    sys.exit(main())
