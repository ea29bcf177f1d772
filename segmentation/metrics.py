"""Streaming segmentation metrics: mIoU from one confusion matrix, and boundary IoU (``docs/method.md`` §9).

- :func:`confusion_matrix`: (C, C) pixel counts of one or many label maps, rows ground truth, columns prediction.
- :func:`boundary_mask`: the pixels of a binary mask within ``d`` steps of its outside (the image border counts
  as outside), the definition of the published boundary IoU code (Cheng et al.'s ``mask_to_boundary``).
- :func:`boundary_iou_counts`: per-class boundary intersections and unions of one image.
- :class:`SegmentationMetrics`: sums the above over a dataset, saves and resumes its state, all-reduces it over
  ``torch.distributed`` and reports percentages with the semantics of mmseg 0.27's ``mean_iou``.

Outputs follow the inputs: counts are computed on the inputs' device and are int64.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from graphprop._validation import check_positive_int, check_range

__all__ = ["SegmentationMetrics", "boundary_iou_counts", "boundary_mask", "confusion_matrix"]


# --------------------------------------------------------------------------- validation
def _check_num_classes(num_classes: int) -> None:
    check_positive_int("num_classes", num_classes)


def _check_labels(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int) -> tuple[Tensor, Tensor, Tensor]:
    """Validate a prediction / ground-truth pair; returns them as int64 and the mask of counted pixels."""
    _check_num_classes(num_classes)
    for name, labels in (("pred", pred), ("target", target)):
        if not isinstance(labels, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor of class indices, got {labels.dtype}")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    if pred.device != target.device:
        raise ValueError(f"pred and target must be on the same device, got {pred.device} and {target.device}")
    pred, target = pred.long(), target.long()
    counted = target != ignore_index
    bad_target = counted & ((target < 0) | (target >= num_classes))
    bad_pred = counted & ((pred < 0) | (pred >= num_classes))
    if (bad_target | bad_pred).any():  # one device sync; the details only on the error path
        if bad_target.any():
            value = target[bad_target][0].item()
            raise ValueError(f"target holds the value {value}, which is neither a class in [0, {num_classes}) "
                             f"nor ignore_index={ignore_index}")
        value = pred[bad_pred][0].item()
        raise ValueError(f"pred holds the value {value} on a counted pixel, outside the classes [0, {num_classes})")
    return pred, target, counted


def _erosion_steps(height: int, width: int, dilation_ratio: float) -> int:
    """``d`` of the published ``mask_to_boundary``: Python's round (half to even) of ratio x image diagonal, >= 1."""
    return max(1, round(dilation_ratio * math.sqrt(height * height + width * width)))


# --------------------------------------------------------------------------- functional core
def _confusion(pred: Tensor, target: Tensor, counted: Tensor, num_classes: int) -> Tensor:
    # Ignored pixels go to one extra bin that is dropped: no boolean indexing, so no device sync.
    index = torch.where(counted, target * num_classes + pred, num_classes * num_classes)
    counts = torch.bincount(index.reshape(-1), minlength=num_classes * num_classes + 1)
    return counts[:-1].reshape(num_classes, num_classes)


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """Pixel counts of (ground truth, prediction) pairs.

    Parameters
    ----------
    pred : (...) integer tensor, predicted class per pixel
    target : (...) integer tensor of the same shape, ground-truth class per pixel or ``ignore_index``
    num_classes : int, C
    ignore_index : int, ground-truth value of pixels that are not counted (default 255)

    Returns
    -------
    (C, C) int64 tensor on the inputs' device: ``[i, j]`` counts pixels of class ``i`` predicted as ``j``.

    Raises
    ------
    ValueError
        If the shapes differ, a target value is neither in [0, C) nor ``ignore_index``, or a prediction on a
        counted pixel is outside [0, C) (a label file with unexpected values is an error, not a dropped pixel).
    """
    pred, target, counted = _check_labels(pred, target, num_classes, ignore_index)
    return _confusion(pred, target, counted, num_classes)


def boundary_mask(mask: Tensor, dilation_ratio: float = 0.02) -> Tensor:
    """Inner boundary of binary masks, as in the published boundary IoU code.

    The mask minus its erosion by a 3 x 3 square repeated ``d = max(1, round(dilation_ratio * sqrt(H^2 + W^2)))``
    times (Python's ``round``, half to even), with everything outside the image counted as background, so that a
    mask cut by the image border has a boundary there. ``d`` erosions by 3 x 3 are one erosion by a
    (2d + 1) x (2d + 1) square; it is computed from running sums, so the cost does not grow with ``d``.

    Parameters
    ----------
    mask : (..., H, W) bool tensor
    dilation_ratio : float >= 0, boundary width as a fraction of the image diagonal (default 0.02)

    Returns
    -------
    (..., H, W) bool tensor on ``mask``'s device: True on the boundary pixels of each mask.

    Raises
    ------
    TypeError
        ``mask`` not a bool tensor, ``dilation_ratio`` not a number.
    ValueError
        ``mask`` of fewer than 2 dimensions, ``dilation_ratio`` negative or NaN.
    """
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"mask must be a (..., H, W) bool tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
    if mask.dim() < 2:
        raise ValueError(f"mask must be a (..., H, W) bool tensor, got shape {tuple(mask.shape)}")
    check_range("dilation_ratio", dilation_ratio, low=0)
    height, width = mask.shape[-2:]
    if height == 0 or width == 0:
        return mask.clone()
    d = _erosion_steps(height, width, dilation_ratio)
    # A pixel survives the erosion when its (2d + 1)^2 window holds no background, the outside included:
    # count background pixels per window with cumulative sums along each axis in turn.
    background = torch.nn.functional.pad((~mask).to(torch.int32), (d, d, d, d), value=1)
    for dim in (-2, -1):
        sums = torch.nn.functional.pad(background.cumsum(dim, dtype=torch.int32), (1, 0) if dim == -1 else (0, 0, 1, 0))
        size = sums.shape[dim]
        background = sums.narrow(dim, 2 * d + 1, size - 2 * d - 1) - sums.narrow(dim, 0, size - 2 * d - 1)
    return mask & (background > 0)


def _boundary_counts(pred: Tensor, target: Tensor, counted: Tensor, num_classes: int,
                     dilation_ratio: float) -> tuple[Tensor, Tensor]:
    # Published protocol: the prediction is ignored where the ground truth is, and the classes of the image are
    # those in either map; a mask is compared only with the masks of the same class.
    # Ignored pixels become the label C in both maps: never a class mask, and one extra bin in the counts.
    pred = torch.where(counted, pred, num_classes)
    target = torch.where(counted, target, num_classes)
    present = (torch.bincount(target.flatten(), minlength=num_classes + 1)
               + torch.bincount(pred.flatten(), minlength=num_classes + 1))[:num_classes] > 0
    classes = present.nonzero().flatten()
    intersection = torch.zeros(num_classes, dtype=torch.int64, device=pred.device)
    union = torch.zeros_like(intersection)
    for chunk in classes.split(8):  # a few classes at a time bounds the memory of large images
        levels = chunk.view(-1, 1, 1)
        gt_edge = boundary_mask(target == levels, dilation_ratio)
        pred_edge = boundary_mask(pred == levels, dilation_ratio)
        intersection[chunk] = (gt_edge & pred_edge).sum((-2, -1))
        union[chunk] = (gt_edge | pred_edge).sum((-2, -1))
    return intersection, union


def boundary_iou_counts(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = 255,
                        dilation_ratio: float = 0.02) -> tuple[Tensor, Tensor]:
    """Per-class boundary intersections and unions of one image (§9, the published ``boundary_iou``).

    Prediction pixels where the ground truth is ``ignore_index`` are set to ignore first. For every class present
    in the ground truth or the (masked) prediction, the :func:`boundary_mask` of its ground-truth mask and of its
    predicted mask are compared. Boundary IoU of a dataset is the sum of intersections over the sum of unions.

    Parameters
    ----------
    pred : (H, W) integer tensor, predicted class per pixel
    target : (H, W) integer tensor, ground-truth class per pixel or ``ignore_index``
    num_classes : int, C
    ignore_index : int, default 255
    dilation_ratio : float, boundary width as a fraction of the image diagonal (default 0.02)

    Returns
    -------
    intersection, union : (C,) int64 tensors on the inputs' device, pixel counts; 0 and 0 for a class in neither map.
    """
    if pred.dim() != 2:
        raise ValueError(f"pred and target must be (H, W) label maps, got shape {tuple(pred.shape)}")
    pred, target, counted = _check_labels(pred, target, num_classes, ignore_index)
    return _boundary_counts(pred, target, counted, num_classes, dilation_ratio)


# --------------------------------------------------------------------------- streaming accumulator
def _percent(numerator: Tensor, denominator: Tensor) -> Tensor:
    """100 * numerator / denominator in float64, NaN where the denominator is 0."""
    numerator, denominator = numerator.double(), denominator.double()
    return torch.where(denominator > 0, 100 * numerator / denominator.clamp_min(1), float("nan"))


class SegmentationMetrics:
    """mIoU, accuracies and (optionally) boundary IoU summed over a dataset, one image at a time.

    Parameters
    ----------
    num_classes : int, C
    ignore_index : int, ground-truth value that is not counted (default 255)
    boundary : bool, also accumulate boundary IoU counts (default False; costs a few erosions per image)
    dilation_ratio : float, boundary width as a fraction of the image diagonal (default 0.02, as published)
    device : where the sums live; None (default): on the device of the first :meth:`update`'s inputs

    Attributes
    ----------
    confusion : (C, C) int64 tensor, rows ground truth, columns prediction
    boundary_intersection, boundary_union : (C,) int64 tensors (zeros when ``boundary`` is False)
    images : int, how many images were added
    """

    def __init__(self, num_classes: int, *, ignore_index: int = 255, boundary: bool = False,
                 dilation_ratio: float = 0.02, device=None):
        _check_num_classes(num_classes)
        check_range("dilation_ratio", dilation_ratio, low=0)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.boundary = bool(boundary)
        self.dilation_ratio = float(dilation_ratio)
        self._follow_inputs = device is None
        device = torch.device("cpu") if device is None else torch.device(device)
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
        self.boundary_intersection = torch.zeros(num_classes, dtype=torch.int64, device=device)
        self.boundary_union = torch.zeros(num_classes, dtype=torch.int64, device=device)
        self.images = 0

    def _to(self, device: torch.device) -> None:
        self.confusion = self.confusion.to(device)
        self.boundary_intersection = self.boundary_intersection.to(device)
        self.boundary_union = self.boundary_union.to(device)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add one image.

        Parameters
        ----------
        pred : (H, W) integer tensor, predicted class per pixel
        target : (H, W) integer tensor on the same device, ground-truth class per pixel or ``ignore_index``
        """
        if pred.dim() != 2 or target.dim() != 2:
            raise ValueError(f"pred and target must be (H, W) label maps, got shapes {tuple(pred.shape)} and "
                             f"{tuple(target.shape)}")
        pred, target, counted = _check_labels(pred, target, self.num_classes, self.ignore_index)
        if self._follow_inputs and self.confusion.device != pred.device:
            self._to(pred.device)
        state = self.confusion.device
        self.confusion += _confusion(pred, target, counted, self.num_classes).to(state)
        if self.boundary:
            intersection, union = _boundary_counts(pred, target, counted, self.num_classes, self.dilation_ratio)
            self.boundary_intersection += intersection.to(state)
            self.boundary_union += union.to(state)
        self.images += 1

    def state_dict(self) -> dict[str, Tensor]:
        """Everything needed to resume: the sums, the image count and the settings, as CPU tensors."""
        return {
            "num_classes": torch.tensor(self.num_classes),
            "ignore_index": torch.tensor(self.ignore_index),
            "boundary": torch.tensor(self.boundary),
            "dilation_ratio": torch.tensor(self.dilation_ratio, dtype=torch.float64),
            "images": torch.tensor(self.images),
            "confusion": self.confusion.cpu().clone(),
            "boundary_intersection": self.boundary_intersection.cpu().clone(),
            "boundary_union": self.boundary_union.cpu().clone(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict`; its settings (classes, ignore index, boundary, ratio) must match these."""
        mine = self.state_dict()
        settings = ("num_classes", "ignore_index", "boundary") + (("dilation_ratio",) if self.boundary else ())
        for key in settings + ("images", "confusion", "boundary_intersection", "boundary_union"):
            if key not in state:
                raise ValueError(f"state has no {key!r}: not a SegmentationMetrics state_dict")
        for key in settings:
            if torch.as_tensor(state[key]).item() != mine[key].item():
                raise ValueError(f"state was saved with {key}={torch.as_tensor(state[key]).item()}, these metrics have "
                                 f"{key}={mine[key].item()}")
        device = self.confusion.device
        for key in ("confusion", "boundary_intersection", "boundary_union"):
            if tuple(state[key].shape) != tuple(mine[key].shape):
                raise ValueError(f"state[{key!r}] has shape {tuple(state[key].shape)}, "
                                 f"expected {tuple(mine[key].shape)}")
            setattr(self, key, state[key].to(device=device, dtype=torch.int64, copy=True))
        self.images = int(state["images"])

    def all_reduce(self, group=None) -> None:
        """Sum the state of every process of ``torch.distributed`` (a no-op when it is not initialised).

        Call it once, after the last :meth:`update` on every rank; each rank then holds the totals. The sums travel
        as one int64 tensor, on the current CUDA device under NCCL and on the state's device otherwise.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        device = self.confusion.device
        packed = torch.cat([self.confusion.flatten(), self.boundary_intersection, self.boundary_union,
                            torch.tensor([self.images], device=device)])
        if dist.get_backend(group) == "nccl" and packed.device.type != "cuda":
            packed = packed.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
        packed = packed.to(device)
        c = self.num_classes
        self.confusion = packed[: c * c].reshape(c, c).clone()
        self.boundary_intersection = packed[c * c: c * c + c].clone()
        self.boundary_union = packed[c * c + c: c * c + 2 * c].clone()
        self.images = int(packed[-1])

    def compute(self) -> dict:
        """Scores in percent (mmseg 0.27 ``mean_iou``: dataset totals first, then the NaN-mean over classes).

        Returns
        -------
        dict with ``per_class_iou`` (list of C floats, NaN for a class in neither ground truth nor prediction),
        ``miou`` (their NaN-mean), ``per_class_accuracy`` (C floats, NaN for a class absent from the ground truth),
        ``pixel_accuracy`` (counted pixels predicted right, mmseg's aAcc); with ``boundary`` also
        ``per_class_boundary_iou`` (summed intersections / summed unions, NaN where the union sum is 0) and
        ``boundary_iou`` (their NaN-mean). Values are not rounded; NaN where nothing was counted.
        """
        confusion = self.confusion.cpu()
        correct = confusion.diagonal()
        in_target, in_pred = confusion.sum(1), confusion.sum(0)
        iou = _percent(correct, in_target + in_pred - correct)
        result = {
            "per_class_iou": iou.tolist(),
            "miou": iou.nanmean().item(),
            "per_class_accuracy": _percent(correct, in_target).tolist(),
            "pixel_accuracy": _percent(correct.sum(), confusion.sum()).item(),
        }
        if self.boundary:
            boundary_iou = _percent(self.boundary_intersection.cpu(), self.boundary_union.cpu())
            result["per_class_boundary_iou"] = boundary_iou.tolist()
            result["boundary_iou"] = boundary_iou.nanmean().item()
        return result
