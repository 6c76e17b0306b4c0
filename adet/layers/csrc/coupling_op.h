// The coupling ops' host side, shared by the CUDA build (coupling_kernel.cu) and the CPU emulator
// (coupling_emulator.cpp): argument checks, dtype dispatch, output allocation, proposal ordering and launch
// geometry. A Backend supplies where tensors live and how a grid of phases runs:
//   static bool on_device(const at::Tensor&);                 // the tensors this backend accepts
//   static at::Tensor empty(at::IntArrayRef, at::TensorOptions);  // outputs every element of which a thread writes
//   template <S, A> static void forward(Grid, Inputs<S, A>, A* out);
//   template <S, A, kDim> static void pixel_gradients(Grid, Inputs<S, A>, const A* grad_out, const A* prob,
//                                                     const int64_t* order, const int64_t* offsets, S* grad);
//   template <S, A, kDim> static void proposal_gradients(Grid, Inputs<S, A>, const A* grad_out, const A* prob,
//                                                        A* grad_embeds, A* grad_margins);  // either may be null
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <tuple>
#include <type_traits>
#include <vector>

#include "coupling_kernels.h"

namespace coupling {

template <class Backend>
void check_inputs(const at::Tensor& pixels, const at::Tensor& embeds, const at::Tensor& margins,
                  const at::Tensor& images) {
  const std::pair<const at::Tensor*, const char*> named[] = {
      {&pixels, "pixel_embeddings"}, {&embeds, "proposal_embeddings"}, {&margins, "proposal_margins"},
      {&images, "image_indices"}};
  for (const auto& [tensor, name] : named) {
    TORCH_CHECK(Backend::on_device(*tensor), name, " is on ", tensor->device(), ", which this build cannot run on");
    TORCH_CHECK(tensor->device() == pixels.device(), name, " is on ", tensor->device(), " but pixel_embeddings on ",
                pixels.device());
    TORCH_CHECK(tensor->is_contiguous(), name, " must be contiguous");
  }
  TORCH_CHECK(pixels.dim() == 4, "pixel_embeddings must be (N, D, H, W), got ", pixels.sizes());
  const int64_t dim = pixels.size(1), num_proposals = embeds.size(0);
  TORCH_CHECK(dim >= 1 && dim <= kMaxDim, "the fused coupling supports embedding dimensions 1 to ", kMaxDim, ", got ",
              dim);
  TORCH_CHECK(embeds.dim() == 2 && embeds.size(1) == dim, "proposal_embeddings must be (P, ", dim, "), got ",
              embeds.sizes());
  TORCH_CHECK(margins.sizes() == embeds.sizes(), "proposal_margins must be (P, ", dim, "), got ", margins.sizes());
  TORCH_CHECK(images.dim() == 1 && images.size(0) == num_proposals, "image_indices must be (", num_proposals,
              ",), got ", images.sizes());
  TORCH_CHECK(images.scalar_type() == at::kLong, "image_indices must be int64, got ", images.scalar_type());
  const auto acc = pixels.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(embeds.scalar_type() == acc && margins.scalar_type() == acc, "proposal embeddings and margins must be ",
              acc, " for ", pixels.scalar_type(), " pixel embeddings, got ", embeds.scalar_type(), " and ",
              margins.scalar_type());
}

template <typename scalar_t, typename acc_t>
Inputs<scalar_t, acc_t> make_inputs(const at::Tensor& pixels, const at::Tensor& embeds, const at::Tensor& margins,
                                    const at::Tensor& images) {
  return {pixels.data_ptr<scalar_t>(), embeds.data_ptr<acc_t>(), margins.data_ptr<acc_t>(),
          images.data_ptr<int64_t>(), pixels.size(0), embeds.size(0), pixels.size(2) * pixels.size(3),
          static_cast<int>(pixels.size(1))};
}

// Runs the statements with scalar_t the pixels' dtype (float, double, half or bfloat16) and acc_t its accumulator.
#define COUPLING_DISPATCH(PIXELS, NAME, ...)                                                     \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, (PIXELS).scalar_type(), NAME, [&] { \
    using acc_t = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;      \
    __VA_ARGS__                                                                                  \
  })

// (P, H, W) probabilities in acc_t.
template <class Backend>
at::Tensor forward(const at::Tensor& pixels, const at::Tensor& embeds, const at::Tensor& margins,
                   const at::Tensor& images) {
  check_inputs<Backend>(pixels, embeds, margins, images);
  const auto acc = embeds.scalar_type();
  at::Tensor out = Backend::empty({embeds.size(0), pixels.size(2), pixels.size(3)}, pixels.options().dtype(acc));
  if (out.numel() == 0) return out;
  COUPLING_DISPATCH(pixels, "coupling_forward", {
    const auto in = make_inputs<scalar_t, acc_t>(pixels, embeds, margins, images);
    Backend::template forward<scalar_t, acc_t>(forward_grid(in.hw, in.num_proposals), in, out.data_ptr<acc_t>());
  });
  return out;
}

// [grad_pixels, grad_embeds, grad_margins]; an entry whose gradient is not needed is an undefined tensor.
template <class Backend>
std::vector<at::Tensor> backward(const at::Tensor& grad_out, const at::Tensor& prob, const at::Tensor& pixels,
                                 const at::Tensor& embeds, const at::Tensor& margins, const at::Tensor& images,
                                 bool need_pixels, bool need_embeds, bool need_margins) {
  check_inputs<Backend>(pixels, embeds, margins, images);
  const auto expected = std::vector<int64_t>{embeds.size(0), pixels.size(2), pixels.size(3)};
  for (const auto& [tensor, name] : {std::make_pair(&grad_out, "grad_output"), std::make_pair(&prob, "probabilities")}) {
    TORCH_CHECK(Backend::on_device(*tensor) && tensor->device() == pixels.device(), name, " must be on ",
                pixels.device());
    TORCH_CHECK(tensor->is_contiguous(), name, " must be contiguous");
    TORCH_CHECK(tensor->sizes() == at::IntArrayRef(expected), name, " must be ", at::IntArrayRef(expected), ", got ",
                tensor->sizes());
    TORCH_CHECK(tensor->scalar_type() == embeds.scalar_type(), name, " must be ", embeds.scalar_type());
  }
  at::Tensor grad_pixels, grad_embeds, grad_margins;
  if (need_pixels) grad_pixels = Backend::empty(pixels.sizes(), pixels.options());
  if (need_embeds) grad_embeds = Backend::empty(embeds.sizes(), embeds.options());
  if (need_margins) grad_margins = Backend::empty(margins.sizes(), margins.options());
  const int64_t num_images = pixels.size(0), num_proposals = embeds.size(0);
  const int64_t hw = pixels.size(2) * pixels.size(3);
  if (num_proposals == 0 || hw == 0) {  // nothing couples: every gradient is zero
    for (auto* grad : {&grad_pixels, &grad_embeds, &grad_margins}) {
      if (grad->defined()) grad->zero_();
    }
    return {grad_pixels, grad_embeds, grad_margins};
  }
  COUPLING_DISPATCH(pixels, "coupling_backward", {
    const auto in = make_inputs<scalar_t, acc_t>(pixels, embeds, margins, images);
    auto launch = [&](auto dim_tag) {
      constexpr int kDim = decltype(dim_tag)::value;
      if (need_pixels) {
        // Proposals grouped by image with no host synchronisation: a stable sort, and each image's first position
        // found by binary search (indices outside [0, N) fall outside every range; the kernels assert on them).
        const auto sorted = at::sort(images, /*stable=*/true, /*dim=*/0, /*descending=*/false);
        const auto& order = std::get<1>(sorted);
        const auto offsets = at::searchsorted(std::get<0>(sorted), at::arange(num_images + 1, images.options()));
        Backend::template pixel_gradients<scalar_t, acc_t, kDim>(
            pixel_gradient_grid(hw, num_images), in, grad_out.data_ptr<acc_t>(), prob.data_ptr<acc_t>(),
            order.data_ptr<int64_t>(), offsets.data_ptr<int64_t>(), grad_pixels.data_ptr<scalar_t>());
      }
      if (need_embeds || need_margins) {
        Backend::template proposal_gradients<scalar_t, acc_t, kDim>(
            proposal_gradient_grid(num_proposals), in, grad_out.data_ptr<acc_t>(), prob.data_ptr<acc_t>(),
            need_embeds ? grad_embeds.data_ptr<acc_t>() : nullptr,
            need_margins ? grad_margins.data_ptr<acc_t>() : nullptr);
      }
    };
    if (in.dim <= 16) {
      launch(std::integral_constant<int, 16>());
    } else {
      launch(std::integral_constant<int, kMaxDim>());
    }
  });
  return {grad_pixels, grad_embeds, grad_margins};
}

}  // namespace coupling
