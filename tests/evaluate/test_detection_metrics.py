"""Blur-detection metrics against py_sod_metrics (where it defines the same thing) and a direct BR2Net reading."""
from __future__ import annotations

import numpy as np
import py_sod_metrics
import pytest

from pipeline_src.evaluate import detection_metrics as D


def _dataset(seed: int = 0, n: int = 4):
    """Soft in-focus maps that agree with the GT only in part; values kept off the k/255 level boundaries."""
    rng = np.random.default_rng(seed)
    preds, gts = [], []
    for i in range(n):
        h, w = 23 + 4 * i, 31 + 3 * i
        gt = np.zeros((h, w), dtype=bool)
        gt[: h // 2 + i, : w // 3 + 2 * i] = True
        level = np.where(gt, rng.integers(90, 256, gt.shape), rng.integers(0, 170, gt.shape))
        pred = (level + rng.uniform(0.05, 0.95, gt.shape)) / 256.0
        preds.append(pred)
        gts.append(gt)
    return preds, gts


def _br2net_by_hand(preds, gts):
    """BR2Net misc.py cal_precision_recall_mae + AvgMeter + cal_fmeasure, read literally."""
    eps, p_sum, r_sum = 1e-4, np.zeros(256), np.zeros(256)
    for pred, gt in zip(preds, gts):
        prediction = np.floor(pred * 255).astype(np.uint8) / 255.0
        hard_gt = np.zeros(prediction.shape)
        hard_gt[gt.astype(np.float64) > 0.5] = 1
        t = np.sum(hard_gt)
        for threshold in range(256):
            hard_prediction = np.zeros(prediction.shape)
            hard_prediction[prediction > threshold / 255.0] = 1
            tp = np.sum(hard_prediction * hard_gt)
            p = np.sum(hard_prediction)
            p_sum[threshold] += (tp + eps) / (p + eps)
            r_sum[threshold] += (tp + eps) / (t + eps)
    precision, recall = p_sum / len(preds), r_sum / len(preds)
    return max((1 + 0.3) * p * r / (0.3 * p + r) for p, r in zip(precision, recall)), precision, recall


def test_max_f_follows_br2net_rule():
    preds, gts = _dataset()
    expected, precision, recall = _br2net_by_hand(preds, gts)
    assert D.dataset_max_fmeasure(preds, gts) == pytest.approx(expected, abs=1e-12)
    acc = D.DetectionAccumulator()
    for i, (p, g) in enumerate(zip(preds, gts)):
        acc.update(f"im{i}", p, g)
    assert acc.results()["max_f"] == pytest.approx(expected, abs=1e-12)
    curve = acc.pr_curve()
    np.testing.assert_allclose(curve["precision"], precision, atol=1e-12)
    np.testing.assert_allclose(curve["recall"], recall, atol=1e-12)
    assert curve["threshold"][0] == 0 and curve["threshold"][-1] == 1 and len(curve["threshold"]) == 256


def _pysod_per_image_curve(pred, gt):
    handler = py_sod_metrics.FmeasureHandler(with_dynamic=True, with_adaptive=False, beta=0.3)
    evaluator = py_sod_metrics.FmeasureV2({"f": handler})
    evaluator.step(pred, gt, normalize=False)
    # pysod's curve is ordered >= 255, >= 254, ..., >= 0; MLDBD's thresholds are 1/255 .. 255/255
    return evaluator.get_results()["f"]["dynamic"][:255]


def test_mean_max_f_matches_py_sod_metrics_per_image():
    preds, gts = _dataset(seed=1)
    expected = []
    for pred, gt in zip(preds, gts):
        normalised = pred / pred.max()  # MLDBD divides each map by its maximum
        expected.append(_pysod_per_image_curve(normalised, gt).max())
        assert D.per_image_max_fmeasure(pred, gt) == pytest.approx(expected[-1], abs=1e-12)
    acc = D.DetectionAccumulator()
    for i, (p, g) in enumerate(zip(preds, gts)):
        acc.update(f"im{i}", p, g)
    assert acc.results()["mean_max_f"] == pytest.approx(np.mean(expected), abs=1e-12)
    # dividing by the maximum makes the per-image score invariant to the map's scale
    assert D.per_image_max_fmeasure(preds[0] * 0.5, gts[0]) == pytest.approx(D.per_image_max_fmeasure(preds[0], gts[0]))


def test_f_at_half_and_mae_match_py_sod_metrics():
    preds, gts = _dataset(seed=2)
    handler = py_sod_metrics.FmeasureHandler(with_dynamic=False, with_adaptive=False, with_binary=True,
                                             sample_based=True, beta=0.3)
    evaluator = py_sod_metrics.FmeasureV2({"f": handler})
    mae = py_sod_metrics.MAE()
    acc = D.DetectionAccumulator()
    for i, (pred, gt) in enumerate(zip(preds, gts)):
        evaluator.step(pred, gt, normalize=False)
        mae.step(pred, gt, normalize=False)
        acc.update(f"im{i}", pred, gt)
    results = acc.results()
    assert results["f_at_0_5"] == pytest.approx(evaluator.get_results()["f"]["binary"], abs=1e-12)
    assert results["mae"] == pytest.approx(mae.get_results()["mae"], abs=1e-12)


def test_polarity_in_focus_is_one():
    gt = np.zeros((20, 30), dtype=bool)
    gt[:, :12] = True  # left part in focus
    perfect = gt.astype(np.float64)
    inverted = 1.0 - perfect
    assert D.per_image_max_fmeasure(perfect, gt) == pytest.approx(1.0)
    assert D.fmeasure_at_threshold(perfect, gt) == pytest.approx(1.0)
    assert D.dataset_max_fmeasure([perfect], [gt]) == pytest.approx(1.0, abs=1e-6)
    assert D.detection_mae(perfect, gt) == 0.0
    assert D.fmeasure_at_threshold(inverted, gt) == 0.0
    assert D.detection_mae(inverted, gt) == 1.0
    assert D.dataset_max_fmeasure([inverted], [gt]) < 0.5


def test_gt_formats_agree():
    preds, gts = _dataset(seed=3, n=1)
    pred, gt = preds[0], gts[0]
    as_u8 = gt.astype(np.uint8) * 255
    as_float = gt.astype(np.float32)
    for other in (as_u8, as_float, as_u8[..., None]):
        assert D.per_image_max_fmeasure(pred, other) == D.per_image_max_fmeasure(pred, gt)
        assert D.dataset_max_fmeasure([pred], [other]) == D.dataset_max_fmeasure([pred], [gt])


def test_all_zero_gt_gives_finite_values():
    gt = np.zeros((16, 16), dtype=bool)
    pred = np.random.default_rng(0).random((16, 16))
    acc = D.DetectionAccumulator()
    row = acc.update("blank", pred, gt)
    assert all(np.isfinite(v) for k, v in row.items() if k != "image")
    results = acc.results()
    assert all(np.isfinite(v) for v in results.values())
    assert all(np.isfinite(a).all() for a in acc.pr_curve().values())
    assert row["f_at_0_5"] == 0.0 and row["mean_max_f"] == 0.0
    # an all-zero prediction of an all-zero GT: BR2Net's eps make P = R = 1
    assert D.dataset_max_fmeasure([np.zeros((16, 16))], [gt]) == pytest.approx(1.0)


def test_prediction_is_resized_to_gt():
    rng = np.random.default_rng(4)
    gt = np.zeros((40, 60), dtype=bool)
    gt[:, :30] = True
    small = np.clip(gt[::2, ::2].astype(np.float64) * 0.8 + 0.1 * rng.random((20, 30)), 0, 1)
    import cv2

    resized = cv2.resize(small, (60, 40), interpolation=cv2.INTER_LINEAR)
    assert D.per_image_max_fmeasure(small, gt) == D.per_image_max_fmeasure(resized, gt)
    assert D.detection_mae(small, gt) == pytest.approx(D.detection_mae(resized, gt))
    constant = np.full((10, 15), 0.25)
    assert D.detection_mae(constant, np.zeros((40, 60), dtype=bool)) == pytest.approx(0.25)


def test_eight_bit_maps_quantise_back_to_their_levels():
    levels = np.arange(256)
    assert np.array_equal(D.quantise(levels / 255.0), levels)
    assert np.array_equal(D.quantise((levels / 255.0).astype(np.float32)), levels)


def test_bad_inputs_raise():
    gt = np.zeros((8, 8), dtype=bool)
    with pytest.raises(ValueError, match="sigmoid"):
        D.detection_mae(np.full((8, 8), 3.0), gt)  # logits passed by mistake
    with pytest.raises(TypeError, match="probability"):
        D.detection_mae(np.zeros((8, 8), np.uint8), gt)
    with pytest.raises(ValueError, match="H x W"):
        D.detection_mae(np.zeros((8, 8, 3)), gt)
    with pytest.raises(TypeError, match="GT has dtype"):
        D.detection_mae(np.zeros((8, 8)), np.zeros((8, 8), np.int32))
    with pytest.raises(ValueError, match="float masks"):
        D.detection_mae(np.zeros((8, 8)), np.full((8, 8), 2.0))
    with pytest.raises(ValueError, match="no images"):
        D.dataset_max_fmeasure([], [])
    with pytest.raises(ValueError):
        D.dataset_max_fmeasure([np.zeros((8, 8))], [])  # lengths differ
    acc = D.DetectionAccumulator()
    acc.update("a", np.zeros((8, 8)), gt)
    with pytest.raises(ValueError, match="already evaluated"):
        acc.update("a", np.zeros((8, 8)), gt)
