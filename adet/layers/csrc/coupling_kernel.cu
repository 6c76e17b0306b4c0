// The fused coupling on CUDA: each kernel runs one block program of coupling_kernels.h with a DeviceBlock
// (phases separated by __syncthreads(), warp sums by shuffles). The host side is coupling_op.h's, shared with the
// CPU emulator; the Python bindings are in coupling.cpp.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <vector>

#include "coupling_op.h"

namespace coupling {
namespace {

struct DeviceBlock {
  // A value each thread keeps across phases: a register of the calling thread.
  template <typename T>
  struct PerThread {
    T value;
    __device__ T& operator[](int) { return value; }
  };

  __device__ int64_t index_x() const { return blockIdx.x; }
  __device__ int64_t index_y() const { return blockIdx.y; }
  __device__ int64_t grid_x() const { return gridDim.x; }
  __device__ int64_t grid_y() const { return gridDim.y; }

  template <class Body>
  __device__ void phase(Body&& body) {
    body(static_cast<int>(threadIdx.x));
    __syncthreads();
  }

  template <typename T>
  __device__ void store(T* output, int64_t index, T value) {
    output[index] = value;
  }

  // store(thread, sum) where lane 0 holds the sum of value(thread) over its warp.
  template <class Value, class Store>
  __device__ void warp_sum(Value&& value, Store&& store) {
    auto sum = value(static_cast<int>(threadIdx.x));
    for (int offset = kWarp / 2; offset > 0; offset >>= 1) sum += __shfl_down_sync(0xffffffffu, sum, offset);
    store(static_cast<int>(threadIdx.x), sum);
  }
};

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) forward_kernel(const Inputs<scalar_t, acc_t> in, acc_t* out) {
  __shared__ acc_t s_embed[kMaxDim];
  __shared__ acc_t s_margin[kMaxDim];
  DeviceBlock block;
  forward_block(block, in, s_embed, s_margin, out);
}

template <typename scalar_t, typename acc_t, int kDim>
__global__ void __launch_bounds__(kThreads) pixel_gradient_kernel(const Inputs<scalar_t, acc_t> in,
                                                                  const acc_t* grad_out, const acc_t* prob,
                                                                  const int64_t* order, const int64_t* offsets,
                                                                  scalar_t* grad_pixels) {
  DeviceBlock block;
  pixel_gradient_block<DeviceBlock, scalar_t, acc_t, kDim>(block, in, grad_out, prob, order, offsets, grad_pixels);
}

template <typename scalar_t, typename acc_t, int kDim>
__global__ void __launch_bounds__(kThreads) proposal_gradient_kernel(const Inputs<scalar_t, acc_t> in,
                                                                     const acc_t* grad_out, const acc_t* prob,
                                                                     acc_t* grad_embeds, acc_t* grad_margins) {
  __shared__ ProposalShared<acc_t> shared;
  DeviceBlock block;
  proposal_gradient_block<DeviceBlock, scalar_t, acc_t, kDim>(block, in, grad_out, prob, shared, grad_embeds,
                                                              grad_margins);
}

dim3 blocks(Grid grid) { return dim3(static_cast<unsigned>(grid.x), static_cast<unsigned>(grid.y)); }

struct CudaBackend {
  static bool on_device(const at::Tensor& t) { return t.is_cuda(); }
  // Every element of an output is written by exactly one thread (the emulator checks this), so no fill is needed.
  static at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) { return at::empty(sizes, options); }

  template <typename scalar_t, typename acc_t>
  static void forward(Grid grid, const Inputs<scalar_t, acc_t>& in, acc_t* out) {
    forward_kernel<scalar_t, acc_t><<<blocks(grid), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(in, out);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  template <typename scalar_t, typename acc_t, int kDim>
  static void pixel_gradients(Grid grid, const Inputs<scalar_t, acc_t>& in, const acc_t* grad_out, const acc_t* prob,
                              const int64_t* order, const int64_t* offsets, scalar_t* grad_pixels) {
    pixel_gradient_kernel<scalar_t, acc_t, kDim><<<blocks(grid), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        in, grad_out, prob, order, offsets, grad_pixels);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  template <typename scalar_t, typename acc_t, int kDim>
  static void proposal_gradients(Grid grid, const Inputs<scalar_t, acc_t>& in, const acc_t* grad_out,
                                 const acc_t* prob, acc_t* grad_embeds, acc_t* grad_margins) {
    proposal_gradient_kernel<scalar_t, acc_t, kDim><<<blocks(grid), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        in, grad_out, prob, grad_embeds, grad_margins);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

}  // namespace
}  // namespace coupling

at::Tensor coupling_forward_cuda(const at::Tensor& pixels, const at::Tensor& embeds, const at::Tensor& margins,
                                 const at::Tensor& images) {
  TORCH_CHECK(pixels.is_cuda(), "pixel_embeddings must be a CUDA tensor, got one on ", pixels.device());
  const c10::cuda::CUDAGuard guard(pixels.device());
  return coupling::forward<coupling::CudaBackend>(pixels, embeds, margins, images);
}

std::vector<at::Tensor> coupling_backward_cuda(const at::Tensor& grad_out, const at::Tensor& prob,
                                               const at::Tensor& pixels, const at::Tensor& embeds,
                                               const at::Tensor& margins, const at::Tensor& images, bool need_pixels,
                                               bool need_embeds, bool need_margins) {
  TORCH_CHECK(pixels.is_cuda(), "pixel_embeddings must be a CUDA tensor, got one on ", pixels.device());
  const c10::cuda::CUDAGuard guard(pixels.device());
  return coupling::backward<coupling::CudaBackend>(grad_out, prob, pixels, embeds, margins, images, need_pixels,
                                                   need_embeds, need_margins);
}
