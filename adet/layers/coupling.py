"""Embedding coupling: how strongly each pixel belongs to each proposal (EmbedMask, spec section 5.5).

    P_k(i) = exp( - sum_d margin[k, d] * (pixel_embedding[image(k), d, i] - proposal_embedding[k, d]) ** 2 )

Every proposal is scored against every pixel of its image's embedding map: no box crop, no fill value. Training and
inference both call these two functions, which choose the implementation: on CUDA tensors the fused kernel (forward
and backward, no (P, D, H, W) intermediate; ``csrc/``, ``coupling_fused.py``), compiled on first use; everywhere
else, and whenever the kernel cannot be used, the PyTorch reference (``coupling_reference.py``), or, when no
gradient is needed, its matrix-product form.
"""

from __future__ import annotations

import torch

from .coupling_fused import fused_mask_probability
from .coupling_reference import (
    check_coupling_inputs,
    image_mask_probability_no_grad,
    mask_probability_no_grad,
    mask_probability_reference,
)

__all__ = ["image_mask_probability", "mask_probability", "mask_probability_no_grad", "mask_probability_reference"]


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def mask_probability(pixel_embeddings: torch.Tensor, proposal_embeddings: torch.Tensor,
                     proposal_margins: torch.Tensor, image_indices: torch.Tensor) -> torch.Tensor:
    """(P, H, W) coupling probabilities of proposals over the embedding maps of their images.

    Args:
        pixel_embeddings: (N, D, H, W) per-pixel embeddings of N images.
        proposal_embeddings: (P, D) one embedding per proposal.
        proposal_margins: (P, D) positive per-dimension weights (precisions) per proposal.
        image_indices: (P,) int64 index into N of each proposal's image.

    Differentiable with respect to the three float inputs.
    """
    check_coupling_inputs(pixel_embeddings, proposal_embeddings, proposal_margins, image_indices)
    if pixel_embeddings.is_cuda and len(proposal_embeddings) > 0:
        fused = fused_mask_probability(pixel_embeddings, proposal_embeddings, proposal_margins, image_indices)
        if fused is not None:
            return fused
    if not _needs_grad(pixel_embeddings, proposal_embeddings, proposal_margins):
        return mask_probability_no_grad(pixel_embeddings, proposal_embeddings, proposal_margins, image_indices)
    return mask_probability_reference(pixel_embeddings, proposal_embeddings, proposal_margins, image_indices)


def image_mask_probability(pixel_embeddings: torch.Tensor, proposal_embeddings: torch.Tensor,
                           proposal_margins: torch.Tensor) -> torch.Tensor:
    """(P, H, W) probabilities of P proposals over one image's (D, H, W) embedding map: :func:`mask_probability`
    for one image. Off CUDA and without gradients it is tensor operations only, so an exported graph runs it."""
    if pixel_embeddings.is_cuda or _needs_grad(pixel_embeddings, proposal_embeddings, proposal_margins):
        image_indices = torch.zeros(len(proposal_embeddings), dtype=torch.long, device=pixel_embeddings.device)
        return mask_probability(pixel_embeddings[None], proposal_embeddings, proposal_margins, image_indices)
    return image_mask_probability_no_grad(pixel_embeddings, proposal_embeddings, proposal_margins)
