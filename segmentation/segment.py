"""``python -m segmentation.segment``: ``lposs segment`` with the same flags, for ``torchrun``::

    torchrun --nproc-per-node 4 -m segmentation.segment photos/ --classes "cat,dog" --out seg/

The images are sharded over the ranks (each done once, the outputs those of one process); rank 0
writes the summary and the COCO file; on CUDA each local rank takes its own device. The command is
:mod:`segmentation.commands.segment`.
"""

from __future__ import annotations

import sys

from .commands.segment import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
