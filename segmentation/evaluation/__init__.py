"""Evaluation on a labelled dataset, apart from any command line.

- :mod:`~segmentation.evaluation.loop`: predict one image and score it (:func:`evaluate_sample`),
  and the loop over a rank's images (:func:`evaluate_images`).
- :mod:`~segmentation.evaluation.state`: what a run saves after every image, so that ``--resume``
  goes on where it stopped (:class:`EvaluationState`).
- :mod:`~segmentation.evaluation.results`: the results JSON and the printed table.

The datasets are :mod:`segmentation.datasets`, the metrics :mod:`segmentation.metrics`, the ranks
:class:`segmentation.distributed.Distributed`; ``lposs evaluate`` is
:mod:`segmentation.commands.evaluate`.
"""

from .loop import evaluate_images, evaluate_sample, save_prediction
from .results import results_document, results_table
from .state import EvaluationState, run_fingerprint

__all__ = ["EvaluationState", "evaluate_images", "evaluate_sample", "results_document", "results_table",
           "run_fingerprint", "save_prediction"]
