"""Mask losses on coupling probabilities: the binary Lovasz hinge (Berman et al., 2018), batched, and Dice."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lovasz_hinge(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-row Lovasz hinge: a convex surrogate of 1 - IoU of (logits > 0) against binary labels.

    Args:
        logits: (P, Q) real scores: P masks, Q pixels per mask.
        labels: (P, Q) 0/1 targets.

    Returns:
        (P,) loss per mask. For a row whose target is empty this reduces to ReLU(max error).
    """
    labels = labels.to(logits.dtype)
    errors = 1.0 - logits * (2.0 * labels - 1.0)
    errors_sorted, order = torch.sort(errors, dim=1, descending=True)
    labels_sorted = torch.gather(labels, 1, order)
    # Gradient of the Lovasz extension of the Jaccard loss at the sorted errors (Alg. 1 of the paper).
    num_positive = labels_sorted.sum(dim=1, keepdim=True)
    intersection = num_positive - labels_sorted.cumsum(dim=1)
    union = num_positive + (1.0 - labels_sorted).cumsum(dim=1)
    jaccard = 1.0 - intersection / union
    grad = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)
    return (F.relu(errors_sorted) * grad).sum(dim=1)


def lovasz_loss_on_probabilities(probabilities: torch.Tensor, targets: torch.Tensor, eps: float = 1e-6
                                 ) -> torch.Tensor:
    """(P,) Lovasz hinge on the logits of probabilities clamped to [eps, 1 - eps] (|logit| <= 13.8 for 1e-6).

    Args: probabilities and targets of shape (P, ...), flattened per mask.
    """
    num = probabilities.shape[0]
    probabilities = probabilities.reshape(num, -1).clamp(min=eps, max=1 - eps)
    logits = torch.log(probabilities) - torch.log(1 - probabilities)
    return lovasz_hinge(logits, targets.reshape(num, -1))


def dice_loss_on_probabilities(probabilities: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(P,) 1 - 2 sum(p y) / (sum(p^2) + sum(y^2) + 1e-5), the MASK_LOSS_TYPE "Dice" alternative."""
    num = probabilities.shape[0]
    probabilities = probabilities.reshape(num, -1)
    targets = targets.reshape(num, -1).to(probabilities.dtype)
    intersection = (probabilities * targets).sum(dim=1)
    union = (probabilities**2).sum(dim=1) + (targets**2).sum(dim=1) + 1e-5
    return 1.0 - 2 * intersection / union
