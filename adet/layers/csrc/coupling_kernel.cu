// Fused embedding coupling (EmbedMask, spec 5.5), forward and backward, without any (P, D, H, W) intermediate.
//
//   prob[p, i] = exp(-sum_d margin[p, d] * (pixel[n(p), d, i] - embed[p, d])^2)
//
// Inputs may be float, double, half or bfloat16; sums are accumulated in acc_t (double for double inputs, float
// otherwise) and the probabilities are returned in acc_t, as the PyTorch reference computes them.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda.h>
#include <cuda_runtime.h>

#include <type_traits>
#include <vector>

namespace {

constexpr int kThreads = 256;
constexpr int kMaxDim = 64;  // largest embedding dimension supported; kernels are instantiated for <= 16 and <= 64

template <typename T>
__device__ __forceinline__ float to_acc(T v, float) { return static_cast<float>(v); }
template <typename T>
__device__ __forceinline__ double to_acc(T v, double) { return static_cast<double>(v); }

// One block row per proposal; threads stride over the pixels of its image. The proposal's embedding and margins
// sit in shared memory; pixel reads are coalesced along i for every channel d.
template <typename scalar_t, typename acc_t>
__global__ void coupling_forward_kernel(const scalar_t* __restrict__ pixels, const scalar_t* __restrict__ embeds,
                                        const scalar_t* __restrict__ margins, const int64_t* __restrict__ images,
                                        acc_t* __restrict__ out, int64_t num_proposals, int dim, int64_t hw) {
  __shared__ acc_t s_embed[kMaxDim];
  __shared__ acc_t s_margin[kMaxDim];
  for (int64_t p = blockIdx.y; p < num_proposals; p += gridDim.y) {
    __syncthreads();
    for (int d = threadIdx.x; d < dim; d += blockDim.x) {
      s_embed[d] = to_acc(embeds[p * dim + d], acc_t());
      s_margin[d] = to_acc(margins[p * dim + d], acc_t());
    }
    __syncthreads();
    const scalar_t* image = pixels + images[p] * dim * hw;
    for (int64_t i = blockIdx.x * blockDim.x + threadIdx.x; i < hw; i += (int64_t)gridDim.x * blockDim.x) {
      acc_t distance = 0;
      for (int d = 0; d < dim; ++d) {
        const acc_t diff = to_acc(image[d * hw + i], acc_t()) - s_embed[d];
        distance += s_margin[d] * diff * diff;
      }
      out[p * hw + i] = exp(-distance);
    }
  }
}

// d prob / d pixel summed over the proposals of each image. Thread per (image, pixel), looping over that image's
// proposals (sorted by image: order[offsets[n] .. offsets[n+1]]).
//   grad_pixel[n, d, i] = -2 sum_p w_p(i) margin[p, d] (pixel[n, d, i] - embed[p, d]),  w = grad_out * prob
template <typename scalar_t, typename acc_t, int kDim>
__global__ void coupling_backward_pixels_kernel(const acc_t* __restrict__ grad_out, const acc_t* __restrict__ prob,
                                                const scalar_t* __restrict__ pixels,
                                                const scalar_t* __restrict__ embeds,
                                                const scalar_t* __restrict__ margins,
                                                const int64_t* __restrict__ order, const int64_t* __restrict__ offsets,
                                                scalar_t* __restrict__ grad_pixels, int64_t num_images, int dim,
                                                int64_t hw) {
  const int64_t n = blockIdx.y;
  const int64_t begin = offsets[n], end = offsets[n + 1];
  for (int64_t i = blockIdx.x * blockDim.x + threadIdx.x; i < hw; i += (int64_t)gridDim.x * blockDim.x) {
    // Fixed-size arrays with fully unrolled loops stay in registers.
    acc_t x[kDim];
    acc_t grad[kDim];
#pragma unroll
    for (int d = 0; d < kDim; ++d) {
      x[d] = d < dim ? to_acc(pixels[(n * dim + d) * hw + i], acc_t()) : acc_t(0);
      grad[d] = 0;
    }
    for (int64_t k = begin; k < end; ++k) {
      const int64_t p = order[k];
      const acc_t w = grad_out[p * hw + i] * prob[p * hw + i];
      if (w == acc_t(0)) continue;
#pragma unroll
      for (int d = 0; d < kDim; ++d) {
        if (d < dim) {
          grad[d] -= 2 * w * to_acc(margins[p * dim + d], acc_t()) * (x[d] - to_acc(embeds[p * dim + d], acc_t()));
        }
      }
    }
#pragma unroll
    for (int d = 0; d < kDim; ++d) {
      if (d < dim) grad_pixels[(n * dim + d) * hw + i] = static_cast<scalar_t>(grad[d]);
    }
  }
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffff, v, offset);
  return v;
}

// d prob / d embed and d prob / d margin of one proposal: a block per proposal reduces over its pixels.
//   grad_embed[p, d]  =  2 margin[p, d] sum_i w_p(i) (pixel_d(i) - embed[p, d])
//   grad_margin[p, d] = -sum_i w_p(i) (pixel_d(i) - embed[p, d])^2
template <typename scalar_t, typename acc_t, int kDim>
__global__ void coupling_backward_proposals_kernel(const acc_t* __restrict__ grad_out,
                                                   const acc_t* __restrict__ prob,
                                                   const scalar_t* __restrict__ pixels,
                                                   const scalar_t* __restrict__ embeds,
                                                   const scalar_t* __restrict__ margins,
                                                   const int64_t* __restrict__ images,
                                                   scalar_t* __restrict__ grad_embeds,
                                                   scalar_t* __restrict__ grad_margins, int dim, int64_t hw) {
  __shared__ acc_t s_embed[kMaxDim];
  __shared__ acc_t s_first[kThreads / 32][kMaxDim];
  __shared__ acc_t s_second[kThreads / 32][kMaxDim];
  const int64_t p = blockIdx.x;
  for (int d = threadIdx.x; d < dim; d += blockDim.x) s_embed[d] = to_acc(embeds[p * dim + d], acc_t());
  __syncthreads();
  acc_t first[kDim];
  acc_t second[kDim];
#pragma unroll
  for (int d = 0; d < kDim; ++d) first[d] = second[d] = 0;
  const scalar_t* image = pixels + images[p] * dim * hw;
  for (int64_t i = threadIdx.x; i < hw; i += blockDim.x) {
    const acc_t w = grad_out[p * hw + i] * prob[p * hw + i];
    if (w == acc_t(0)) continue;
#pragma unroll
    for (int d = 0; d < kDim; ++d) {
      if (d < dim) {
        const acc_t diff = to_acc(image[d * hw + i], acc_t()) - s_embed[d];
        first[d] += w * diff;
        second[d] += w * diff * diff;
      }
    }
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int d = 0; d < kDim; ++d) {
    if (d < dim) {
      const acc_t a = warp_sum(first[d]);
      const acc_t b = warp_sum(second[d]);
      if (lane == 0) {
        s_first[warp][d] = a;
        s_second[warp][d] = b;
      }
    }
  }
  __syncthreads();
  for (int d = threadIdx.x; d < dim; d += blockDim.x) {
    acc_t a = 0, b = 0;
    for (int k = 0; k < (int)(blockDim.x / 32); ++k) {
      a += s_first[k][d];
      b += s_second[k][d];
    }
    grad_embeds[p * dim + d] = static_cast<scalar_t>(2 * to_acc(margins[p * dim + d], acc_t()) * a);
    grad_margins[p * dim + d] = static_cast<scalar_t>(-b);
  }
}

int blocks_for(int64_t n) { return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 1024)); }

}  // namespace

at::Tensor coupling_forward_cuda(const at::Tensor& pixels, const at::Tensor& embeds, const at::Tensor& margins,
                                 const at::Tensor& images) {
  const c10::cuda::CUDAGuard guard(pixels.device());
  const int64_t num_proposals = embeds.size(0), dim = pixels.size(1), hw = pixels.size(2) * pixels.size(3);
  const auto acc_type = pixels.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto out = at::empty({num_proposals, pixels.size(2), pixels.size(3)}, pixels.options().dtype(acc_type));
  if (num_proposals == 0 || hw == 0) return out;
  const dim3 grid(blocks_for(hw), static_cast<unsigned>(std::min<int64_t>(num_proposals, 65535)));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pixels.scalar_type(), "coupling_forward", [&] {
    using acc_t = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;
    coupling_forward_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
        pixels.data_ptr<scalar_t>(), embeds.data_ptr<scalar_t>(), margins.data_ptr<scalar_t>(),
        images.data_ptr<int64_t>(), out.data_ptr<acc_t>(), num_proposals, static_cast<int>(dim), hw);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::vector<at::Tensor> coupling_backward_cuda(const at::Tensor& grad_out, const at::Tensor& prob,
                                               const at::Tensor& pixels, const at::Tensor& embeds,
                                               const at::Tensor& margins, const at::Tensor& images) {
  const c10::cuda::CUDAGuard guard(pixels.device());
  const int64_t num_images = pixels.size(0), num_proposals = embeds.size(0), dim = pixels.size(1);
  const int64_t hw = pixels.size(2) * pixels.size(3);
  auto grad_pixels = at::zeros_like(pixels);
  auto grad_embeds = at::zeros_like(embeds);
  auto grad_margins = at::zeros_like(margins);
  if (num_proposals == 0 || hw == 0) return {grad_pixels, grad_embeds, grad_margins};
  // Proposals grouped by image, so each pixel thread visits only its own image's proposals.
  const auto order = images.argsort();
  const auto counts = at::bincount(images, {}, num_images);
  const auto offsets = at::cat({at::zeros({1}, counts.options()), counts.cumsum(0)});
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pixels.scalar_type(), "coupling_backward", [&] {
    using acc_t = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;
    const dim3 pixel_grid(blocks_for(hw), static_cast<unsigned>(num_images));
    auto launch = [&](auto dim_tag) {
      constexpr int kDim = decltype(dim_tag)::value;
      coupling_backward_pixels_kernel<scalar_t, acc_t, kDim><<<pixel_grid, kThreads, 0, stream>>>(
          grad_out.data_ptr<acc_t>(), prob.data_ptr<acc_t>(), pixels.data_ptr<scalar_t>(),
          embeds.data_ptr<scalar_t>(), margins.data_ptr<scalar_t>(), order.data_ptr<int64_t>(),
          offsets.data_ptr<int64_t>(), grad_pixels.data_ptr<scalar_t>(), num_images, static_cast<int>(dim), hw);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      coupling_backward_proposals_kernel<scalar_t, acc_t, kDim>
          <<<static_cast<unsigned>(num_proposals), kThreads, 0, stream>>>(
              grad_out.data_ptr<acc_t>(), prob.data_ptr<acc_t>(), pixels.data_ptr<scalar_t>(),
              embeds.data_ptr<scalar_t>(), margins.data_ptr<scalar_t>(), images.data_ptr<int64_t>(),
              grad_embeds.data_ptr<scalar_t>(), grad_margins.data_ptr<scalar_t>(), static_cast<int>(dim), hw);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (dim <= 16) {
      launch(std::integral_constant<int, 16>());
    } else {
      launch(std::integral_constant<int, kMaxDim>());
    }
  });
  return {grad_pixels, grad_embeds, grad_margins};
}
