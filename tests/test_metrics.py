"""segmentation.metrics: the confusion matrix against scikit-learn, the scores against numpy formulas, the boundary
against scipy's erosion and hand-checked arrays, the streaming state (resume, all-reduce over two processes)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from segmentation import metrics
from segmentation.metrics import SegmentationMetrics, boundary_iou_counts, boundary_mask, confusion_matrix

SETTINGS = settings(max_examples=20, deadline=None)
IGNORE = 255


# --------------------------------------------------------------------------- helpers written for the tests
@st.composite
def labelled_image(draw, num_classes: int | None = None):
    """(pred, target, C): small int64 label maps; target has ignore pixels, some classes are absent."""
    c = num_classes or draw(st.integers(1, 6))
    shape = (draw(st.integers(1, 8)), draw(st.integers(1, 8)))
    target = draw(arrays(np.int64, shape, elements=st.sampled_from([*range(c), IGNORE])))
    pred = draw(arrays(np.int64, shape, elements=st.integers(0, c - 1)))
    return pred, target, c


def sklearn_counts(target: np.ndarray, pred: np.ndarray, c: int) -> np.ndarray:
    """(C, C) counts of the pixels whose target is not ignore, by scikit-learn."""
    from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix  # here: spawned workers skip it

    keep = target != IGNORE
    if not keep.any():
        return np.zeros((c, c), np.int64)
    with warnings.catch_warnings():  # it warns on a single label even when given all of them
        warnings.simplefilter("ignore", UserWarning)
        return sklearn_confusion_matrix(target[keep], pred[keep], labels=list(range(c)))


def numpy_scores(conf: np.ndarray) -> dict:
    """mmseg 0.27 total_area_to_metrics, written with numpy on a confusion matrix (rows ground truth)."""
    conf = conf.astype(np.float64)
    inter, area_gt, area_pred = np.diag(conf), conf.sum(1), conf.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = 100 * inter / (area_gt + area_pred - inter)
        acc = 100 * inter / area_gt
        all_acc = 100 * inter.sum() / conf.sum()
    miou = np.nan if np.isnan(iou).all() else np.nanmean(iou)
    return {"per_class_iou": iou, "miou": miou, "per_class_accuracy": acc, "pixel_accuracy": all_acc}


def scipy_boundary(mask: np.ndarray, ratio: float) -> np.ndarray:
    """The published boundary (OpenCV erosion of a zero-padded mask) with scipy: border_value=0."""
    from scipy import ndimage

    h, w = mask.shape
    d = max(1, round(ratio * math.sqrt(h**2 + w**2)))
    eroded = ndimage.binary_erosion(mask, structure=np.ones((3, 3)), iterations=d, border_value=0)
    return mask & ~eroded


def numpy_boundary_counts(pred: np.ndarray, target: np.ndarray, c: int, ratio: float = 0.02):
    """The published per-image loop: mask the prediction, classes of either map, binary boundaries per class."""
    pred = np.where(target == IGNORE, IGNORE, pred)
    inter, union = np.zeros(c, np.int64), np.zeros(c, np.int64)
    for cls in (set(np.unique(target)) | set(np.unique(pred))) - {IGNORE}:
        gt_edge, pred_edge = scipy_boundary(target == cls, ratio), scipy_boundary(pred == cls, ratio)
        inter[cls] += (gt_edge & pred_edge).sum()
        union[cls] += (gt_edge | pred_edge).sum()
    return inter, union


def blocky_labels(rng: np.random.Generator, shape, c: int, ignore_share: float = 0.1) -> np.ndarray:
    """Label map made of rectangles (so that boundaries are a minority of the pixels), with ignore pixels."""
    h, w = shape
    bh, bw = rng.integers(2, 9, 2)
    labels = rng.integers(0, c, (h // bh + 1, w // bw + 1)).repeat(bh, 0).repeat(bw, 1)[:h, :w]
    labels[rng.random(shape) < ignore_share] = IGNORE
    return labels


def noisy_prediction(rng: np.random.Generator, target: np.ndarray, c: int) -> np.ndarray:
    """Mostly right where the target is a class, anything (but a class) where it is ignore."""
    pred = np.where(rng.random(target.shape) < 0.8, target, rng.integers(0, c, target.shape))
    return np.where(target == IGNORE, rng.integers(0, c, target.shape), pred)


def assert_scores_equal(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_allclose(np.asarray(got[key], dtype=float), np.asarray(value, dtype=float),
                                   rtol=1e-12, equal_nan=True, err_msg=key)


def test_public_names():
    assert sorted(metrics.__all__) == ["SegmentationMetrics", "boundary_iou_counts", "boundary_mask",
                                       "confusion_matrix"]


# --------------------------------------------------------------------------- confusion matrix and scores
@SETTINGS
@given(labelled_image())
def test_confusion_matrix_matches_sklearn(case):
    pred, target, c = case
    got = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), c)
    assert got.dtype == torch.int64 and got.shape == (c, c)
    np.testing.assert_array_equal(got.numpy(), sklearn_counts(target, pred, c))


def test_confusion_matrix_any_shape_and_dtype():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 4, (2, 3, 5, 7)).astype(np.uint8)
    target[0, 0] = IGNORE
    pred = rng.integers(0, 4, target.shape).astype(np.int32)
    keep = target != IGNORE
    got = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), 4)
    expected = sklearn_counts(target, pred, 4)
    np.testing.assert_array_equal(got.numpy(), expected)
    # another ignore value; 255 is then a bad label
    other = np.where(keep, target, 100).astype(np.int64)
    np.testing.assert_array_equal(confusion_matrix(torch.from_numpy(pred), torch.from_numpy(other), 4,
                                                   ignore_index=100).numpy(), expected)


@SETTINGS
@given(st.integers(1, 5).flatmap(lambda c: st.lists(labelled_image(c), min_size=1, max_size=4)))
def test_scores_match_numpy_formulas(images):
    c = images[0][2]
    scores = SegmentationMetrics(c)
    total = np.zeros((c, c), np.int64)
    for pred, target, _ in images:
        scores.update(torch.from_numpy(pred), torch.from_numpy(target))
        total += sklearn_counts(target, pred, c)
    assert scores.images == len(images)
    assert_scores_equal(scores.compute(), numpy_scores(total))


def test_scores_hand_checked():
    """4 classes; class 2 only predicted, class 3 nowhere (NaN, left out of the mean)."""
    target = torch.tensor([[IGNORE] * 4, [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]])
    pred = torch.tensor([[2, 2, 2, 2], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 2]])
    scores = SegmentationMetrics(4)
    scores.update(pred, target)
    result = scores.compute()
    # class 0: 6 / 6; class 1: 5 right of 6, union 6; class 2: union 1 (the (3, 3) pixel), nothing right
    np.testing.assert_allclose(result["per_class_iou"], [100, 500 / 6, 0, np.nan], equal_nan=True)
    assert result["miou"] == pytest.approx((100 + 500 / 6 + 0) / 3)
    np.testing.assert_allclose(result["per_class_accuracy"], [100, 500 / 6, np.nan, np.nan], equal_nan=True)
    assert result["pixel_accuracy"] == pytest.approx(100 * 11 / 12)
    assert "boundary_iou" not in result


def test_scores_of_nothing_are_nan():
    scores = SegmentationMetrics(3)
    scores.update(torch.zeros(2, 2, dtype=torch.long), torch.full((2, 2), IGNORE))
    result = scores.compute()
    assert np.isnan(result["miou"]) and np.isnan(result["pixel_accuracy"])
    assert all(np.isnan(result["per_class_iou"]))


# --------------------------------------------------------------------------- streaming state
def _images(seed: int, count: int, c: int):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        target = blocky_labels(rng, tuple(rng.integers(5, 40, 2)), c)
        out.append((torch.from_numpy(noisy_prediction(rng, target, c)), torch.from_numpy(target)))
    return out


def test_streaming_equals_one_matrix_of_the_concatenation():
    images = _images(1, 6, 5)
    scores = SegmentationMetrics(5)
    for pred, target in images:
        scores.update(pred, target)
    preds, targets = zip(*images, strict=True)
    whole = confusion_matrix(torch.cat([p.flatten() for p in preds]), torch.cat([t.flatten() for t in targets]), 5)
    assert torch.equal(scores.confusion, whole)
    assert scores.images == 6
    assert torch.equal(scores.boundary_union, torch.zeros(5, dtype=torch.int64))  # boundary=False: untouched


def test_state_dict_round_trip_resumes_exactly(tmp_path):
    images = _images(2, 5, 4)
    uninterrupted = SegmentationMetrics(4, boundary=True)
    for pred, target in images:
        uninterrupted.update(pred, target)

    first = SegmentationMetrics(4, boundary=True)
    for pred, target in images[:3]:
        first.update(pred, target)
    state = first.state_dict()
    assert all(value.device.type == "cpu" for value in state.values())
    torch.save(state, tmp_path / "state.pt")
    first.update(*images[3])  # the state must be a copy, not a view of the live sums
    saved = torch.load(tmp_path / "state.pt")
    for key, value in saved.items():
        assert torch.equal(state[key], value), key
    resumed = SegmentationMetrics(4, boundary=True)
    resumed.load_state_dict(saved)
    assert resumed.images == 3
    for pred, target in images[3:]:
        resumed.update(pred, target)

    for key, value in uninterrupted.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
    assert_scores_equal(resumed.compute(), uninterrupted.compute())


def test_load_state_dict_checks_the_settings():
    state = SegmentationMetrics(4, boundary=True).state_dict()
    with pytest.raises(ValueError, match="num_classes"):
        SegmentationMetrics(5, boundary=True).load_state_dict(state)
    with pytest.raises(ValueError, match="boundary"):
        SegmentationMetrics(4).load_state_dict(state)
    with pytest.raises(ValueError, match="dilation_ratio"):
        SegmentationMetrics(4, boundary=True, dilation_ratio=0.05).load_state_dict(state)
    with pytest.raises(ValueError, match="confusion"):
        SegmentationMetrics(4, boundary=True).load_state_dict({k: v for k, v in state.items() if k != "confusion"})


def test_all_reduce_without_distributed_is_a_no_op():
    scores = SegmentationMetrics(3)
    scores.update(torch.tensor([[0, 1]]), torch.tensor([[0, 2]]))
    before = scores.state_dict()
    scores.all_reduce()
    for key, value in scores.state_dict().items():
        assert torch.equal(value, before[key])


def _all_reduce_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        scores = SegmentationMetrics(4, boundary=True)
        for index, (pred, target) in enumerate(_images(3, 5, 4)):
            if index % world == rank:
                scores.update(pred, target)
        scores.all_reduce()
        torch.save(scores.state_dict(), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_all_reduce_over_two_gloo_processes_equals_one_process(tmp_path):
    mp.spawn(_all_reduce_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    alone = SegmentationMetrics(4, boundary=True)
    for pred, target in _images(3, 5, 4):
        alone.update(pred, target)
    assert alone.boundary_union.sum() > 0
    for rank in range(2):
        state = torch.load(tmp_path / f"rank{rank}.pt")
        for key, value in alone.state_dict().items():
            assert torch.equal(state[key], value), (rank, key)


# --------------------------------------------------------------------------- boundary
def test_erosion_steps_round_like_the_published_code():
    """d = int(round(0.02 * diagonal)), at least 1; Python's round goes half to even."""
    steps = metrics._erosion_steps
    assert steps(3, 4, 0.02) == 1  # 0.1 -> 0 -> at least 1
    assert steps(15, 20, 0.02) == 1  # diagonal 25: 0.5 -> 0 -> 1
    assert steps(45, 60, 0.02) == 2  # diagonal 75: 1.5 -> 2
    assert steps(75, 100, 0.02) == 2  # diagonal 125: 2.5 -> 2 (half to even, not 3)
    assert steps(512, 683, 0.02) == 17  # diagonal 853.6: 17.07
    assert steps(9, 9, 0.16) == 2
    # the 2.5 case through the public function: a full 75 x 100 mask keeps a 2-pixel frame
    assert boundary_mask(torch.ones(75, 100, dtype=torch.bool)).sum() == 75 * 100 - 71 * 96


@SETTINGS
@given(arrays(np.bool_, st.tuples(st.integers(1, 20), st.integers(1, 20))),
       st.sampled_from([0.0, 0.02, 0.1, 0.25, 0.6]))
def test_boundary_mask_matches_scipy_erosion(mask, ratio):
    got = boundary_mask(torch.from_numpy(mask), ratio)
    assert got.dtype == torch.bool
    np.testing.assert_array_equal(got.numpy(), scipy_boundary(mask, ratio))


def test_boundary_mask_matches_scipy_on_dense_masks():
    """Mostly-True masks, where erosions are deep (random masks above are mostly boundary)."""
    rng = np.random.default_rng(4)
    for ratio in (0.02, 0.05, 0.1):
        for _ in range(5):
            mask = rng.random(tuple(rng.integers(20, 70, 2))) < 0.995
            np.testing.assert_array_equal(boundary_mask(torch.from_numpy(mask), ratio).numpy(),
                                          scipy_boundary(mask, ratio))


def _square(size: int, top: int, left: int, side: int) -> torch.Tensor:
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[top:top + side, left:left + side] = True
    return mask


def test_boundary_of_a_square_d1():
    # 9 x 9 image: diagonal 12.7, 0.02 * 12.7 = 0.25 -> d = 1: the 5 x 5 square keeps its 3 x 3 inside
    expected = torch.tensor([
        [0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 1, 1, 1, 1, 1, 0, 0],
        [0, 0, 1, 0, 0, 0, 1, 0, 0],
        [0, 0, 1, 0, 0, 0, 1, 0, 0],
        [0, 0, 1, 0, 0, 0, 1, 0, 0],
        [0, 0, 1, 1, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0],
    ], dtype=torch.bool)
    assert torch.equal(boundary_mask(_square(9, 2, 2, 5)), expected)


def test_boundary_of_a_square_d2():
    # 0.16 * 12.7 = 2.04 -> d = 2: only the centre survives a 5 x 5 erosion
    expected = _square(9, 2, 2, 5)
    expected[4, 4] = False
    assert torch.equal(boundary_mask(_square(9, 2, 2, 5), 0.16), expected)


def test_boundary_larger_than_the_mask():
    # d = 2 and a 3 x 3 square: nothing survives, the whole mask is boundary
    mask = _square(9, 3, 3, 3)
    assert torch.equal(boundary_mask(mask, 0.16), mask)


def test_boundary_at_the_image_border():
    # 5 x 5 image, d = 1, rows 0-2 set: row 0 is boundary because the outside of the image counts as background;
    # only (1, 1), (1, 2), (1, 3) have their whole 3 x 3 neighbourhood inside the mask
    mask = torch.zeros(5, 5, dtype=torch.bool)
    mask[:3] = True
    expected = torch.tensor([
        [1, 1, 1, 1, 1],
        [1, 0, 0, 0, 1],
        [1, 1, 1, 1, 1],
        [0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
    ], dtype=torch.bool)
    assert torch.equal(boundary_mask(mask), expected)
    # the full image: a 1-pixel frame
    full = torch.ones(5, 5, dtype=torch.bool)
    frame = full.clone()
    frame[1:4, 1:4] = False
    assert torch.equal(boundary_mask(full), frame)


def test_boundary_of_one_pixel_and_of_nothing():
    one = torch.zeros(6, 7, dtype=torch.bool)
    one[0, 3] = True
    assert torch.equal(boundary_mask(one), one)
    assert not boundary_mask(torch.zeros(6, 7, dtype=torch.bool)).any()
    assert torch.equal(boundary_mask(torch.ones(1, 1, dtype=torch.bool)), torch.ones(1, 1, dtype=torch.bool))


def test_boundary_mask_is_batched_over_leading_dims():
    rng = np.random.default_rng(5)
    masks = torch.from_numpy(rng.random((2, 3, 17, 23)) < 0.9)
    got = boundary_mask(masks, 0.1)
    assert got.shape == masks.shape
    for i in range(2):
        for j in range(3):
            assert torch.equal(got[i, j], boundary_mask(masks[i, j], 0.1))


def test_boundary_iou_counts_hand_checked():
    # 4 x 4 image, d = 1. Class 0: the left half (all boundary, 8 px) against the whole image (its frame, 12 px):
    # 6 shared (column 0, and column 1 in rows 0 and 3), union 14. Class 1: the right half (8 px) never predicted.
    target = torch.tensor([[0, 0, 1, 1]] * 4)
    pred = torch.zeros(4, 4, dtype=torch.long)
    inter, union = boundary_iou_counts(pred, target, 3)
    assert inter.tolist() == [6, 0, 0] and union.tolist() == [14, 8, 0]
    assert inter.dtype == union.dtype == torch.int64


def test_boundary_iou_counts_mask_the_prediction_where_the_target_is_ignored():
    # The top row is ignore: the class-2 prediction there is dropped. Class 2 is then only predicted at (3, 3):
    # union 1 (5 if the top row counted). Class 0 matches (6, 6); class 1 lost (3, 3): 5 shared of 6.
    target = torch.tensor([[IGNORE] * 4, [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]])
    pred = torch.tensor([[2, 2, 2, 2], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 2]])
    inter, union = boundary_iou_counts(pred, target, 4)
    assert inter.tolist() == [6, 5, 0, 0] and union.tolist() == [6, 6, 1, 0]


def test_dataset_boundary_iou_matches_a_per_image_numpy_loop():
    rng = np.random.default_rng(6)
    c, ratio = 6, 0.05
    scores = SegmentationMetrics(c, boundary=True, dilation_ratio=ratio)
    inter, union = np.zeros(c, np.int64), np.zeros(c, np.int64)
    for shape in [(30, 40), (17, 61), (45, 45), (8, 9), (64, 33)]:
        target = blocky_labels(rng, shape, c - 1)  # class c - 1 never occurs: NaN
        pred = noisy_prediction(rng, target, c - 1)
        scores.update(torch.from_numpy(pred), torch.from_numpy(target))
        i, u = numpy_boundary_counts(pred, target, c, ratio)
        inter, union = inter + i, union + u
    assert torch.equal(scores.boundary_intersection, torch.from_numpy(inter))
    assert torch.equal(scores.boundary_union, torch.from_numpy(union))
    with np.errstate(invalid="ignore"):
        expected = 100 * inter / union
    result = scores.compute()
    np.testing.assert_allclose(result["per_class_boundary_iou"], expected, rtol=1e-12, equal_nan=True)
    assert np.isnan(result["per_class_boundary_iou"][c - 1])
    assert result["boundary_iou"] == pytest.approx(np.nanmean(expected), rel=1e-12)
    assert result["boundary_iou"] < result["miou"]  # boundaries are the hard part of noisy predictions


# --------------------------------------------------------------------------- bad inputs
def test_bad_inputs_raise_clear_errors():
    a = torch.zeros(3, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(a, torch.zeros(4, 3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="same shape"):
        SegmentationMetrics(2).update(a, torch.zeros(3, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        SegmentationMetrics(2).update(a[None], a[None])
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        boundary_iou_counts(a.flatten(), a.flatten(), 2)
    bad_target = a.clone()
    bad_target[1, 2] = 7
    with pytest.raises(ValueError, match="target holds the value 7"):
        confusion_matrix(a, bad_target, 3)
    with pytest.raises(ValueError, match="target holds the value 7"):
        SegmentationMetrics(3, boundary=True).update(a, bad_target)
    bad_pred = a.clone()
    bad_pred[0, 0] = -1
    with pytest.raises(ValueError, match="pred holds the value -1"):
        confusion_matrix(bad_pred, a, 3)
    with pytest.raises(ValueError, match="pred holds the value 3"):
        boundary_iou_counts(bad_pred + 4, a, 3)
    # a prediction out of range where the target is ignored is not counted, so not an error
    assert confusion_matrix(bad_pred, torch.where(bad_pred < 0, IGNORE, a), 3).sum() == 11
    with pytest.raises(TypeError, match="integer"):
        confusion_matrix(a.float(), a, 3)
    with pytest.raises(ValueError, match="num_classes must be a positive integer, got 0"):
        SegmentationMetrics(0)
    with pytest.raises(TypeError, match="num_classes must be a positive integer, got float 2.5"):
        SegmentationMetrics(2.5)
    with pytest.raises(TypeError, match="bool tensor, got torch.int64"):
        boundary_mask(a)
    with pytest.raises(ValueError, match=r"bool tensor, got shape \(4,\)"):
        boundary_mask(torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"dilation_ratio must be in \[0, inf\]"):
        boundary_mask(a.bool(), -0.1)
    with pytest.raises(TypeError, match="dilation_ratio must be a number"):
        SegmentationMetrics(3, boundary=True, dilation_ratio="0.02")
    with pytest.raises(ValueError, match="dilation_ratio"):
        SegmentationMetrics(3, boundary=True, dilation_ratio=float("nan"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    images = _images(7, 4, 5)
    cpu, cuda = SegmentationMetrics(5, boundary=True), SegmentationMetrics(5, boundary=True)
    for pred, target in images:
        cpu.update(pred, target)
        cuda.update(pred.cuda(), target.cuda())
    assert cuda.confusion.device.type == "cuda"  # the sums follow the inputs
    for key, value in cpu.state_dict().items():
        assert torch.equal(cuda.state_dict()[key], value), key
    mask = torch.rand(3, 50, 70) < 0.95
    assert torch.equal(boundary_mask(mask.cuda(), 0.05).cpu(), boundary_mask(mask, 0.05))
