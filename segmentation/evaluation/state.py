"""What an evaluation saves after every image: ``--resume`` goes on from there with the same result."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..metrics import SegmentationMetrics

__all__ = ["EvaluationState", "run_fingerprint"]


def run_fingerprint(settings: dict) -> str:
    """The SHA-256 of ``settings`` as sorted JSON: a saved state resumes only a run with equal settings."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


@dataclass
class EvaluationState:
    """One rank's progress: the metrics so far, the images done and skipped, the seconds per stage.

    Attributes
    ----------
    path : Path
        Where it is saved (``<output>.partial/rank<R>-of-<W>.pt``, see :meth:`path_for`).
    fingerprint : str
        :func:`run_fingerprint` of the run's settings.
    metrics : :class:`~segmentation.metrics.SegmentationMetrics`
    done : set of str
        The keys (:attr:`Sample.key <segmentation.datasets.Sample.key>`) of the images recorded.
    skipped : list of dict
        ``{"image": path, "error": message}`` of the images that could not be read.
    timings : dict
        Seconds per stage, over every run of this state.
    """

    path: Path
    fingerprint: str
    metrics: SegmentationMetrics
    done: set[str] = field(default_factory=set)
    skipped: list[dict] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @staticmethod
    def path_for(output: Path, rank: int, world: int) -> Path:
        """The state file of rank ``rank`` of ``world`` for the results file ``output``."""
        return output.with_name(output.name + ".partial") / f"rank{rank}-of-{world}.pt"

    def resume(self) -> bool:
        """Load the saved state at :attr:`path` into this one; False when there is none.

        Raises
        ------
        ValueError
            The saved state is of a run with other settings (another fingerprint).
        """
        import torch

        if not self.path.is_file():
            return False
        saved = torch.load(self.path, weights_only=False)
        if saved["fingerprint"] != self.fingerprint:
            raise ValueError(f"{self.path} was saved by a run with other settings; "
                             "rerun without --resume to start over")
        self.metrics.load_state_dict(saved["metrics"])
        self.done, self.skipped, self.timings = set(saved["done"]), list(saved["skipped"]), dict(saved["timings"])
        return True

    def save(self) -> None:
        """Write the state atomically (a temporary file renamed onto :attr:`path`)."""
        import torch

        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save({"fingerprint": self.fingerprint, "metrics": self.metrics.state_dict(),
                    "done": sorted(self.done), "skipped": self.skipped, "timings": self.timings}, tmp)
        os.replace(tmp, self.path)

    def remove(self, *, folder: bool) -> None:
        """Delete the saved file, and with ``folder`` its folder when it is empty (the last rank's job)."""
        self.path.unlink(missing_ok=True)
        if folder:
            try:
                self.path.parent.rmdir()
            except OSError:
                pass
