"""Embedding coupling: how strongly each pixel belongs to each proposal (EmbedMask, spec section 5.5).

    P_k(i) = exp( - sum_d margin[k, d] * (pixel_embedding[image(k), d, i] - proposal_embedding[k, d]) ** 2 )

Every proposal is scored against every pixel of its image's embedding map: no box crop, no fill value. This module
holds the one public entry point, :func:`mask_probability`, which training and inference both call.
"""

from __future__ import annotations

import torch


def mask_probability_reference(pixel_embeddings: torch.Tensor, proposal_embeddings: torch.Tensor,
                               proposal_margins: torch.Tensor, image_indices: torch.Tensor) -> torch.Tensor:
    """Dense PyTorch coupling, the reference every faster path is tested against.

    Args:
        pixel_embeddings: (N, D, H, W) per-pixel embeddings of N images.
        proposal_embeddings: (P, D) one embedding per proposal.
        proposal_margins: (P, D) positive per-dimension weights (precisions) per proposal.
        image_indices: (P,) int64 index into N of each proposal's image.

    Returns:
        (P, H, W) probabilities in [0, 1].
    """
    num_proposals, dim = proposal_embeddings.shape
    height, width = pixel_embeddings.shape[-2:]
    # The same op sequence as the official code, so float32 results agree to the last bit on CPU.
    pixels = pixel_embeddings.permute(0, 2, 3, 1)[image_indices]  # (P, H, W, D)
    proposals = proposal_embeddings.view(num_proposals, 1, 1, dim).expand(-1, height, width, -1)
    margins = proposal_margins.view(num_proposals, 1, 1, dim).expand(-1, height, width, -1)
    squared_distance = (pixels - proposals) ** 2
    return torch.exp(-torch.sum(squared_distance * margins, dim=3))


def _check_inputs(pixel_embeddings: torch.Tensor, proposal_embeddings: torch.Tensor,
                  proposal_margins: torch.Tensor, image_indices: torch.Tensor) -> None:
    if pixel_embeddings.dim() != 4:
        raise ValueError(f"pixel_embeddings must be (N, D, H, W), got shape {tuple(pixel_embeddings.shape)}")
    dim = pixel_embeddings.shape[1]
    for name, t in (("proposal_embeddings", proposal_embeddings), ("proposal_margins", proposal_margins)):
        if t.dim() != 2 or t.shape[1] != dim:
            raise ValueError(f"{name} must be (P, {dim}), got shape {tuple(t.shape)}")
    if proposal_embeddings.shape[0] != proposal_margins.shape[0] or image_indices.shape != (
            proposal_embeddings.shape[0],):
        raise ValueError("proposal_embeddings, proposal_margins and image_indices must have the same length P")


def mask_probability(pixel_embeddings: torch.Tensor, proposal_embeddings: torch.Tensor,
                     proposal_margins: torch.Tensor, image_indices: torch.Tensor) -> torch.Tensor:
    """(P, H, W) coupling probabilities; see :func:`mask_probability_reference` for the arguments.

    Differentiable with respect to all three float inputs.
    """
    _check_inputs(pixel_embeddings, proposal_embeddings, proposal_margins, image_indices)
    return mask_probability_reference(pixel_embeddings, proposal_embeddings, proposal_margins, image_indices)
