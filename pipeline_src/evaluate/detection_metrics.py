"""Defocus-blur-detection metrics: three F-measure variants (beta^2 = 0.3), MAE and the PR curve.

Polarity: every map is the probability that a pixel is IN FOCUS (1 = sharp, 0 = blurred); ground-truth masks
use the same polarity (the manifests normalise it). Predictions are H x W floats in [0, 1] (sigmoid of the
model's logits); a prediction of another size is resized bilinearly (cv2 INTER_LINEAR) to the GT's size.
GT masks may be bool, uint8 (0..255) or floats in [0, 1].

Variants (reference/PAPERS.md §3.4; papers rarely say which they use, so every table names it):
- `max_f` (default; BR2Net/DeFusionNet `misc.py`, R3Net lineage): prediction quantised to uint8 as floor(255 p)
  (BR2Net's infer.py converts with ToPILImage, i.e. mul(255).byte()), GT hard at > 0.5; for t = 0..255 the map
  is binarised at p_u8 > t; per image P = (TP + 1e-4) / (#predicted + 1e-4), R = (TP + 1e-4) / (#positive +
  1e-4); P and R are averaged over the images per threshold, F computed per threshold, and the maximum taken.
- `mean_max_f` (MLDBD `evaluate_dbd`, BTBNet lineage): per image the map is divided by its maximum, GT hard at
  >= 0.1 (im2double(gt) >= 0.1); thresholds i/255, i = 1..255, p >= threshold; P = TP / #predicted,
  R = TP / #positive (0 where a denominator is 0); the per-image maximum F, averaged over images.
- `f_at_0_5` (D-DFFNet `F_score1` in effect): per image p >= 0.5 against GT > 0.5, P and R as in MLDBD, F;
  averaged over images.
- `mae`: mean |p - gt| on [0, 1] with the float prediction and the GT scaled to [0, 1], averaged over images.
F = (1 + beta^2) P R / (beta^2 P + R), 0 where P = R = 0. Quantisation adds 1e-6 before the floor, so a map
that was 8-bit (k / 255) quantises back to k.
"""
from __future__ import annotations

import numpy as np

BETA2 = 0.3
LEVELS = 256
BR2NET_EPS = 1e-4
BR2NET_GT_THRESHOLD = 0.5  # gt > 0.5
MLDBD_GT_THRESHOLD = 0.1  # gt >= 0.1
FIXED_THRESHOLD = 0.5
QUANTISE_GUARD = 1e-6


def prepare_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and bring (prediction, GT) to float64 H x W on [0, 1] at the GT's resolution."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    pred = pred[..., 0] if pred.ndim == 3 and pred.shape[-1] == 1 else pred
    gt = gt[..., 0] if gt.ndim == 3 and gt.shape[-1] == 1 else gt
    if pred.ndim != 2 or gt.ndim != 2:
        raise ValueError(f"detection maps must be H x W (or H x W x 1); got prediction {pred.shape}, GT {gt.shape}")
    if not np.issubdtype(pred.dtype, np.floating):
        raise TypeError(f"prediction has dtype {pred.dtype}; pass the in-focus probability as floats in [0, 1]")
    if not np.isfinite(pred).all() or pred.min() < 0 or pred.max() > 1:
        raise ValueError(f"prediction values span [{pred.min()}, {pred.max()}]; expected probabilities in [0, 1] "
                         "(apply a sigmoid to the model's logits)")
    gt = _gt_to_unit(gt)
    pred = pred.astype(np.float64)
    if pred.shape != gt.shape:
        import cv2

        pred = np.clip(cv2.resize(pred, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)
    return pred, gt


def _gt_to_unit(gt: np.ndarray) -> np.ndarray:
    if gt.dtype == bool:
        return gt.astype(np.float64)
    if gt.dtype == np.uint8:
        return gt.astype(np.float64) / 255.0
    if np.issubdtype(gt.dtype, np.floating):
        if not np.isfinite(gt).all() or gt.min() < 0 or gt.max() > 1:
            raise ValueError(f"GT values span [{gt.min()}, {gt.max()}]; float masks must be in [0, 1]")
        return gt.astype(np.float64)
    raise TypeError(f"GT has dtype {gt.dtype}; expected bool, uint8 (0..255) or floats in [0, 1]")


def quantise(pred: np.ndarray) -> np.ndarray:
    """[0, 1] -> integer levels 0..255, floor(255 p) with a guard for maps that were 8-bit."""
    return np.clip(np.floor(pred * (LEVELS - 1) + QUANTISE_GUARD), 0, LEVELS - 1).astype(np.int64)


def fmeasure(precision, recall, beta2: float = BETA2) -> np.ndarray:
    precision, recall = np.asarray(precision, np.float64), np.asarray(recall, np.float64)
    numerator = (1 + beta2) * precision * recall
    denominator = beta2 * precision + recall
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def _counts_at_or_above(levels: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each level t = 0..255: (#pixels with level >= t, #positive pixels with level >= t)."""
    predicted = np.cumsum(np.bincount(levels.ravel(), minlength=LEVELS)[::-1])[::-1]
    true_positive = np.cumsum(np.bincount(levels[positive], minlength=LEVELS)[::-1])[::-1]
    return predicted, true_positive


def br2net_precision_recall(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One image's precision and recall at thresholds t = 0..255 (p_u8 > t), BR2Net's rule."""
    pred, gt = prepare_pair(pred, gt)
    positive = gt > BR2NET_GT_THRESHOLD
    predicted, tp = _counts_at_or_above(quantise(pred), positive)
    # p_u8 > t  is  level >= t + 1; nothing is above 255
    predicted, tp = np.append(predicted[1:], 0), np.append(tp[1:], 0)
    precision = (tp + BR2NET_EPS) / (predicted + BR2NET_EPS)
    recall = (tp + BR2NET_EPS) / (positive.sum() + BR2NET_EPS)
    return precision, recall


def per_image_max_fmeasure(pred: np.ndarray, gt: np.ndarray, beta2: float = BETA2) -> float:
    """MLDBD's per-image maximum F over thresholds i/255, i = 1..255, after dividing the map by its maximum."""
    pred, gt = prepare_pair(pred, gt)
    peak = pred.max()
    if peak > 0:
        pred = pred / peak
    positive = gt >= MLDBD_GT_THRESHOLD
    predicted, tp = _counts_at_or_above(quantise(pred), positive)
    predicted, tp = predicted[1:], tp[1:]  # thresholds 1/255 .. 255/255
    precision = np.divide(tp, predicted, out=np.zeros(tp.shape), where=predicted > 0)
    n_positive = positive.sum()
    recall = tp / n_positive if n_positive else np.zeros(tp.shape)
    return float(fmeasure(precision, recall, beta2).max())


def fmeasure_at_threshold(pred: np.ndarray, gt: np.ndarray, threshold: float = FIXED_THRESHOLD,
                          beta2: float = BETA2) -> float:
    pred, gt = prepare_pair(pred, gt)
    predicted = pred >= threshold
    positive = gt > BR2NET_GT_THRESHOLD
    tp = np.count_nonzero(predicted & positive)
    precision = tp / predicted.sum() if predicted.any() else 0.0
    recall = tp / positive.sum() if positive.any() else 0.0
    return float(fmeasure(precision, recall, beta2))


def detection_mae(pred: np.ndarray, gt: np.ndarray) -> float:
    pred, gt = prepare_pair(pred, gt)
    return float(np.mean(np.abs(pred - gt)))


class DetectionAccumulator:
    """Per-image rows plus the dataset-level BR2Net precision/recall sums; `results()` gives every variant."""

    def __init__(self, beta2: float = BETA2):
        self.beta2 = beta2
        self.rows: list[dict] = []
        self._seen: set[str] = set()
        self._precision_sum = np.zeros(LEVELS)
        self._recall_sum = np.zeros(LEVELS)

    def update(self, image_id: str, pred: np.ndarray, gt: np.ndarray) -> dict:
        if image_id in self._seen:
            raise ValueError(f"image {image_id!r} was already evaluated")
        pred, gt = prepare_pair(pred, gt)
        precision, recall = br2net_precision_recall(pred, gt)
        self._precision_sum += precision
        self._recall_sum += recall
        row = {
            "image": image_id,
            "max_f": float(fmeasure(precision, recall, self.beta2).max()),  # this image alone
            "mean_max_f": per_image_max_fmeasure(pred, gt, self.beta2),
            "f_at_0_5": fmeasure_at_threshold(pred, gt, FIXED_THRESHOLD, self.beta2),
            "mae": detection_mae(pred, gt),
        }
        self.rows.append(row)
        self._seen.add(image_id)
        return row

    def pr_curve(self) -> dict[str, np.ndarray]:
        """Dataset-level curve: threshold t/255 (binarised at p_u8 > t), mean precision, mean recall, F."""
        if not self.rows:
            raise ValueError("no images were evaluated")
        precision, recall = self._precision_sum / len(self.rows), self._recall_sum / len(self.rows)
        return {"threshold": np.arange(LEVELS) / (LEVELS - 1), "precision": precision, "recall": recall,
                "fmeasure": fmeasure(precision, recall, self.beta2)}

    def results(self) -> dict[str, float]:
        curve = self.pr_curve()
        return {
            "max_f": float(curve["fmeasure"].max()),
            "mean_max_f": float(np.mean([r["mean_max_f"] for r in self.rows])),
            "f_at_0_5": float(np.mean([r["f_at_0_5"] for r in self.rows])),
            "mae": float(np.mean([r["mae"] for r in self.rows])),
        }

    def __len__(self) -> int:
        return len(self.rows)


def dataset_max_fmeasure(preds, gts, beta2: float = BETA2) -> float:
    """BR2Net's max-F over a whole dataset (sequences of prediction / GT maps)."""
    precision_sum, recall_sum, count = np.zeros(LEVELS), np.zeros(LEVELS), 0
    for pred, gt in zip(preds, gts, strict=True):
        precision, recall = br2net_precision_recall(pred, gt)
        precision_sum, recall_sum, count = precision_sum + precision, recall_sum + recall, count + 1
    if count == 0:
        raise ValueError("dataset_max_fmeasure: no images given")
    return float(fmeasure(precision_sum / count, recall_sum / count, beta2).max())
