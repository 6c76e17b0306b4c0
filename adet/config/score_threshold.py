"""The one mapping from a user's score threshold (``--confidence-threshold``, ``adet.load(confidence=)``,
detectron2's ``MODEL.ROI_HEADS.SCORE_THRESH_TEST``) onto the config key that holds it.

A detection's score is sqrt(class probability x centerness), as the official code reports it; the model's candidate
threshold MODEL.FCOS.INFERENCE_TH_TEST applies to class x centerness (THRESH_WITH_CTR True, the default) or to the
class probability alone (THRESH_WITH_CTR False)."""

from __future__ import annotations

from adet.errors import ConfigError


def candidate_threshold(min_score: float, what: str = "the score threshold") -> float:
    """MODEL.FCOS.INFERENCE_TH_TEST for a score threshold: its square (scores are square roots)."""
    if not 0 <= float(min_score) <= 1:
        raise ConfigError(f"{what} {min_score}: a score threshold is between 0 and 1")
    return float(min_score) ** 2


def set_score_threshold(cfg, min_score: float, what: str = "the score threshold") -> float:
    """Make ``cfg``'s model keep the detections scoring at least ``min_score`` (0..1): MODEL.FCOS.INFERENCE_TH_TEST
    becomes ``min_score``^2. Returns the score the model's output must still be filtered by: 0 where that threshold
    is exact (THRESH_WITH_CTR True), else ``min_score`` (a class probability >= ``min_score``^2 is necessary for the
    score, centerness being at most 1, but not sufficient)."""
    cfg.MODEL.FCOS.INFERENCE_TH_TEST = candidate_threshold(min_score, what)
    return 0.0 if cfg.MODEL.FCOS.THRESH_WITH_CTR else float(min_score)

