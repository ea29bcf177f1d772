"""One process or many (``torchrun``): the rank, the world size and the few collectives the runs use."""

from __future__ import annotations

import os

__all__ = ["Distributed"]


class Distributed:
    """Rank, world size and the collectives, or their one-process stand-ins.

    Reads ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` as ``torchrun`` sets them. With more than one
    process it starts ``torch.distributed`` (``nccl`` on CUDA, each local rank on its own device;
    ``gloo`` on the CPU) unless it is started already.

    Parameters
    ----------
    device : str or None
        ``cpu``, ``cuda``, ``cuda:N`` or None (CUDA when available). Under ``torchrun`` on CUDA,
        :attr:`device` becomes ``cuda:LOCAL_RANK``.

    Raises
    ------
    RuntimeError, ValueError
        ``torch.distributed`` cannot start.
    """

    def __init__(self, device: str | None):
        import torch
        import torch.distributed as dist

        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = device
        if self.world > 1 and not dist.is_initialized():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
            if cuda:
                torch.cuda.set_device(local)
                self.device = f"cuda:{local}"
            dist.init_process_group(backend="nccl" if cuda else "gloo")
        self.active = self.world > 1

    def gather(self, value) -> list:
        """``[value of rank 0, value of rank 1, ...]`` on every rank (any picklable value)."""
        if not self.active:
            return [value]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        """End the process group (a no-op for one process)."""
        if self.active:
            import torch.distributed as dist

            dist.destroy_process_group()
