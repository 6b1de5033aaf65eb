"""Matcher: assigns each prediction (anchor) to at most one ground-truth element."""

from typing import List

import torch
from torch import Tensor

__all__ = ["Matcher"]


class Matcher:
    """
    Assign to each predicted "element" (e.g. an anchor) a ground-truth element, or none.

    Each prediction is matched to the ground-truth element with which it has the highest
    match quality (e.g. IoU). The quality value is then bucketed by ``thresholds`` and each
    bucket gets a label from ``labels``:

    - label 1: positive (foreground), label 0: negative (background), label -1: ignore.

    Example: ``thresholds=[0.4, 0.5]``, ``labels=[0, -1, 1]`` (RetinaNet) gives the
    intervals ``[-inf, 0.4) -> 0``, ``[0.4, 0.5) -> -1``, ``[0.5, inf) -> 1``.
    Each interval includes its lower bound and excludes its upper bound.
    """

    def __init__(self, thresholds: List[float], labels: List[int], allow_low_quality_matches: bool = False):
        """
        Args:
            thresholds: increasing list of quality thresholds splitting the predictions into
                ``len(thresholds) + 1`` intervals. The first one must be > 0.
            labels: one label per interval, each in {-1, 0, 1}; ``len(labels)`` must equal
                ``len(thresholds) + 1``.
            allow_low_quality_matches: if True, also mark as positive (label 1) the
                predictions that have the highest quality with some ground-truth element,
                even if that quality is below the positive threshold. All predictions tied
                for a ground-truth element's maximum are marked. Defaults to False.
        """
        thresholds = list(thresholds)
        if len(thresholds) == 0 or thresholds[0] <= 0:
            raise ValueError(f"Matcher: thresholds must be non-empty with thresholds[0] > 0, got {thresholds}")
        thresholds.insert(0, -float("inf"))
        thresholds.append(float("inf"))
        if not all(low <= high for low, high in zip(thresholds[:-1], thresholds[1:])):
            raise ValueError(f"Matcher: thresholds must be sorted increasingly, got {thresholds[1:-1]}")
        if not all(label in (-1, 0, 1) for label in labels):
            raise ValueError(f"Matcher: labels must be in {{-1, 0, 1}}, got {labels}")
        if len(labels) != len(thresholds) - 1:
            raise ValueError(
                f"Matcher: need len(labels) == len(thresholds) + 1, got {len(labels)} labels "
                f"for {len(thresholds) - 2} thresholds"
            )
        self.thresholds = thresholds
        self.labels = list(labels)
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, match_quality_matrix: Tensor):
        """
        Args:
            match_quality_matrix: (M, N) tensor of pairwise quality (>= 0) between M
                ground-truth elements and N predictions.

        Returns:
            matches (Tensor[int64]): (N,), index in [0, M) of the matched ground truth for
                each prediction (0 when M == 0).
            match_labels (Tensor[int8]): (N,), label of each prediction in {-1, 0, 1}.
        """
        if match_quality_matrix.dim() != 2:
            raise ValueError(
                f"Matcher expects a 2-D (num_gt, num_pred) matrix, got shape {tuple(match_quality_matrix.shape)}"
            )
        num_pred = match_quality_matrix.size(1)
        if match_quality_matrix.numel() == 0:
            # No ground truth (or no prediction): everything gets the label of the lowest interval.
            matches = match_quality_matrix.new_full((num_pred,), 0, dtype=torch.int64)
            match_labels = match_quality_matrix.new_full((num_pred,), self.labels[0], dtype=torch.int8)
            return matches, match_labels
        if not torch.all(match_quality_matrix >= 0):
            raise ValueError("Matcher: match_quality_matrix must be >= 0 (e.g. IoU)")

        matched_vals, matches = match_quality_matrix.max(dim=0)
        match_labels = matches.new_full(matches.size(), 1, dtype=torch.int8)
        for label, low, high in zip(self.labels, self.thresholds[:-1], self.thresholds[1:]):
            in_bucket = (matched_vals >= low) & (matched_vals < high)
            match_labels[in_bucket] = label

        if self.allow_low_quality_matches:
            self.set_low_quality_matches_(match_labels, match_quality_matrix)
        return matches, match_labels

    def set_low_quality_matches_(self, match_labels: Tensor, match_quality_matrix: Tensor) -> None:
        """
        Mark as positive every prediction that has the highest quality with some ground
        truth (ties included). ``matches`` is left unchanged: such a prediction stays matched
        to its own argmax ground truth, exactly as in detectron2 / Detectron1.
        """
        highest_quality_foreach_gt, _ = match_quality_matrix.max(dim=1)  # (M,)
        _, pred_inds = torch.nonzero(match_quality_matrix == highest_quality_foreach_gt[:, None], as_tuple=True)
        match_labels[pred_inds] = 1
