"""The embedding coupling in PyTorch: the reference every faster path is tested against, and its matrix-product form
for inference (the CPU route). ``coupling.py`` chooses between these and the fused CUDA kernel.

    P_k(i) = exp( - sum_d margin[k, d] * (pixel_embedding[image(k), d, i] - proposal_embedding[k, d]) ** 2 )

Probabilities are computed in float32 (float64 for float64 inputs) whatever the input precision: in half precision
exp(-distance) loses the tails that rank masks.
"""

from __future__ import annotations

import torch


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 when any input is float64, else float32: the precision every path computes in."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def mask_probability_reference(pixel_embeddings: torch.Tensor, proposal_embeddings: torch.Tensor,
                               proposal_margins: torch.Tensor, image_indices: torch.Tensor) -> torch.Tensor:
    """Dense PyTorch coupling, the reference every faster path is tested against: (P, H, W) probabilities in
    [0, 1], with the arguments of :func:`adet.layers.coupling.mask_probability`."""
    dtype = compute_dtype(pixel_embeddings, proposal_embeddings, proposal_margins)
    pixel_embeddings = pixel_embeddings.to(dtype)
    proposal_embeddings, proposal_margins = proposal_embeddings.to(dtype), proposal_margins.to(dtype)
    num_proposals, dim = proposal_embeddings.shape
    pixels = pixel_embeddings.permute(0, 2, 3, 1)  # (N, H, W, D), a view
    if num_proposals == 0:
        return _coupling(pixels[image_indices], proposal_embeddings, proposal_margins)
    # The official op sequence, so float32 results agree to the last bit on CPU, evaluated image by image with the
    # image's map broadcast over its proposals instead of gathered once per proposal: the gradient of a gather with
    # repeated indices (index_put_ with accumulate) adds in a thread-dependent order on the CPU, making training
    # irreproducible; a broadcast's gradient is a fixed reduction.
    parts, rows_per_image = [], []
    for image in image_indices.unique().tolist():
        rows = (image_indices == image).nonzero().squeeze(1)
        parts.append(_coupling(pixels[image].unsqueeze(0), proposal_embeddings[rows], proposal_margins[rows]))
        rows_per_image.append(rows)
    rows = torch.cat(rows_per_image)
    inverse = torch.empty_like(rows)
    inverse[rows] = torch.arange(num_proposals, device=rows.device)
    return torch.cat(parts)[inverse]  # (P, H, W) back in proposal order


def _coupling(pixels: torch.Tensor, embeddings: torch.Tensor, margins: torch.Tensor) -> torch.Tensor:
    """pixels (P or 1, H, W, D), embeddings and margins (P, D) -> (P, H, W)."""
    dim = embeddings.shape[1]
    squared_distance = (pixels - embeddings.view(-1, 1, 1, dim)) ** 2
    return torch.exp(-torch.sum(squared_distance * margins.view(-1, 1, 1, dim), dim=3))


def mask_probability_no_grad(pixel_embeddings: torch.Tensor, proposal_embeddings: torch.Tensor,
                             proposal_margins: torch.Tensor, image_indices: torch.Tensor) -> torch.Tensor:
    """The same probabilities for inference, without (P, H, W, D) intermediates
    (:func:`image_mask_probability_no_grad` per image)."""
    height, width = pixel_embeddings.shape[-2:]
    out_dtype = compute_dtype(pixel_embeddings, proposal_embeddings, proposal_margins)
    out = pixel_embeddings.new_empty((len(proposal_embeddings), height, width), dtype=out_dtype)
    for image in image_indices.unique().tolist():
        rows = (image_indices == image).nonzero().squeeze(1)
        out[rows] = image_mask_probability_no_grad(pixel_embeddings[image], proposal_embeddings[rows],
                                                   proposal_margins[rows])
    return out


def image_mask_probability_no_grad(pixel_embeddings: torch.Tensor, proposal_embeddings: torch.Tensor,
                           proposal_margins: torch.Tensor) -> torch.Tensor:
    """(P, H, W) probabilities of P proposals over one image's (D, H, W) embedding map, as three matrix products:
    sum_d m (e - q)^2 = m . e^2 - 2 (m q) . e + m . q^2, in float64 so the expansion loses nothing to cancellation
    (equal to the reference up to float32 rounding). Tensor operations only: the exported graph runs it too."""
    dim, height, width = pixel_embeddings.shape
    out_dtype = compute_dtype(pixel_embeddings, proposal_embeddings, proposal_margins)
    x = pixel_embeddings.reshape(dim, height * width).double()  # (D, HW)
    m, q = proposal_margins.double(), proposal_embeddings.double()  # (P, D)
    distance = m @ (x * x) - 2 * (m * q) @ x + (m * q * q).sum(dim=1, keepdim=True)  # (P, HW)
    return torch.exp(-distance).reshape(-1, height, width).to(out_dtype)


def check_coupling_inputs(pixel_embeddings: torch.Tensor, proposal_embeddings: torch.Tensor,
                          proposal_margins: torch.Tensor, image_indices: torch.Tensor) -> None:
    """Raise ValueError naming the argument whose shape or dtype does not fit (values are checked where used)."""
    if pixel_embeddings.dim() != 4:
        raise ValueError(f"pixel_embeddings must be (N, D, H, W), got shape {tuple(pixel_embeddings.shape)}")
    dim = pixel_embeddings.shape[1]
    for name, t in (("proposal_embeddings", proposal_embeddings), ("proposal_margins", proposal_margins)):
        if t.dim() != 2 or t.shape[1] != dim:
            raise ValueError(f"{name} must be (P, {dim}), got shape {tuple(t.shape)}")
    if proposal_embeddings.shape[0] != proposal_margins.shape[0] or image_indices.shape != (
            proposal_embeddings.shape[0],):
        raise ValueError("proposal_embeddings, proposal_margins and image_indices must have the same length P")
    if image_indices.is_floating_point() or image_indices.is_complex() or image_indices.dtype == torch.bool:
        raise ValueError(f"image_indices must be an integer tensor, got {image_indices.dtype}")
