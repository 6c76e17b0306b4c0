// The fused embedding coupling (EmbedMask, spec 5.5), forward and backward, as block programs:
//
//   prob[p, i] = exp(-sum_d margin[p, d] * (pixel[n(p), d, i] - embed[p, d])^2)
//
// Each kernel is written once, here, as what one thread block does: a sequence of phases (per-thread code between
// two barriers) and warp sums. A Block policy says how those run:
//   - DeviceBlock (coupling_kernel.cu): a phase is the calling CUDA thread's body followed by __syncthreads(); a
//     warp sum is __shfl_down_sync.
//   - EmulatedBlock (coupling_emulator.cpp): a phase runs the body for every thread of the block in turn, so all
//     threads finish it before any starts the next; a warp sum replays the shuffles lane by lane. Per-thread values
//     that live across phases (registers on the GPU) are arrays indexed by thread.
// Outputs are written through block.store(), a plain store on the GPU; the emulator counts the stores and requires
// exactly one per output element (none missing, no element written twice or by two threads).
// The CPU test suite therefore executes the very arithmetic, indexing and grid-stride loops the GPU runs, over the
// same launch grids (see the *_grid functions).
//
// Types: pixels are scalar_t (float, double, half or bfloat16); proposal embeddings and margins, probabilities,
// incoming gradients and every sum are acc_t (double for double pixels, float otherwise), as the PyTorch reference
// promotes them. Pixel gradients are written back in scalar_t.
#pragma once

#include <cmath>
#include <cstdint>

#include <c10/macros/Macros.h>

#if defined(__CUDACC__)
#define COUPLING_HOST_DEVICE __host__ __device__ __forceinline__
// A device-side assert: the kernel aborts and the error surfaces at the next synchronisation.
#define COUPLING_ASSERT(condition, message) CUDA_KERNEL_ASSERT((condition) && message)
#else
#include <c10/util/Exception.h>
#define COUPLING_HOST_DEVICE inline
#define COUPLING_ASSERT(condition, message) TORCH_CHECK(condition, message)
#endif

namespace coupling {

constexpr int kThreads = 256;          // threads per block, every kernel
constexpr int kWarp = 32;              // lanes per warp
constexpr int kWarps = kThreads / kWarp;
constexpr int kMaxDim = 64;            // largest embedding dimension; per-thread arrays hold 16 or 64 values
constexpr int64_t kMaxBlocksX = 1024;  // pixel grids: more pixels than kMaxBlocksX * kThreads are grid-strided
constexpr int64_t kMaxGridY = 65535;   // CUDA's limit on gridDim.y: more rows are grid-strided

// ---- launch geometry (host code: the GPU and the emulator launch the same grids) -------------------------------
struct Grid {
  int64_t x;
  int64_t y;
};

inline int64_t pixel_blocks(int64_t hw) {
  const int64_t blocks = (hw + kThreads - 1) / kThreads;
  return blocks < kMaxBlocksX ? blocks : kMaxBlocksX;
}
inline int64_t capped_rows(int64_t rows) { return rows < kMaxGridY ? rows : kMaxGridY; }

// Forward: blocks along x cover the pixels, rows along y the proposals.
inline Grid forward_grid(int64_t hw, int64_t num_proposals) { return {pixel_blocks(hw), capped_rows(num_proposals)}; }
// Pixel gradients: blocks along x cover the pixels, rows along y the images.
inline Grid pixel_gradient_grid(int64_t hw, int64_t num_images) { return {pixel_blocks(hw), capped_rows(num_images)}; }
// Proposal gradients: one block per proposal.
inline Grid proposal_gradient_grid(int64_t num_proposals) { return {num_proposals, 1}; }

// ---- arguments ------------------------------------------------------------------------------------------------
template <typename scalar_t, typename acc_t>
struct Inputs {
  const scalar_t* pixels;  // (N, D, HW)
  const acc_t* embeds;     // (P, D)
  const acc_t* margins;    // (P, D)
  const int64_t* images;   // (P,) in [0, N)
  int64_t num_images;
  int64_t num_proposals;
  int64_t hw;
  int dim;
};

// Shared memory of the proposal-gradient kernel.
template <typename acc_t>
struct ProposalShared {
  acc_t embed[kMaxDim];
  acc_t first[kWarps][kMaxDim];   // per warp: sum_i w (pixel_d - embed_d)
  acc_t second[kWarps][kMaxDim];  // per warp: sum_i w (pixel_d - embed_d)^2
};

template <typename acc_t, int kDim>
struct ProposalPartials {
  acc_t first[kDim];
  acc_t second[kDim];
};

template <typename T>
COUPLING_HOST_DEVICE float to_acc(T value, float) { return static_cast<float>(value); }
template <typename T>
COUPLING_HOST_DEVICE double to_acc(T value, double) { return static_cast<double>(value); }

COUPLING_HOST_DEVICE float exp_of(float x) { return expf(x); }
COUPLING_HOST_DEVICE double exp_of(double x) { return exp(x); }

template <typename scalar_t, typename acc_t>
COUPLING_HOST_DEVICE int64_t image_of(const Inputs<scalar_t, acc_t>& in, int64_t p) {
  const int64_t n = in.images[p];
  COUPLING_ASSERT(n >= 0 && n < in.num_images, "image_indices out of range");
  return n;
}

// ---- forward ----------------------------------------------------------------------------------------------------
// Block (x, y) handles pixel blocks x of proposals y, y + grid_y, ...: a phase stages the proposal's embedding and
// margins in shared memory, a phase has each thread write its pixels (reads coalesced along i for every d).
template <class Block, typename scalar_t, typename acc_t>
COUPLING_HOST_DEVICE void forward_block(Block& block, const Inputs<scalar_t, acc_t>& in, acc_t* s_embed,
                                        acc_t* s_margin, acc_t* out) {
  for (int64_t p = block.index_y(); p < in.num_proposals; p += block.grid_y()) {
    block.phase([&](int thread) {
      for (int d = thread; d < in.dim; d += kThreads) {
        s_embed[d] = in.embeds[p * in.dim + d];
        s_margin[d] = in.margins[p * in.dim + d];
      }
    });
    block.phase([&](int thread) {
      const scalar_t* image = in.pixels + image_of(in, p) * in.dim * in.hw;
      for (int64_t i = block.index_x() * kThreads + thread; i < in.hw; i += block.grid_x() * kThreads) {
        acc_t distance = 0;
        for (int d = 0; d < in.dim; ++d) {
          const acc_t diff = to_acc(image[d * in.hw + i], acc_t()) - s_embed[d];
          distance += s_margin[d] * diff * diff;
        }
        block.store(out, p * in.hw + i, exp_of(-distance));
      }
    });
  }
}

// ---- backward: pixel gradients ----------------------------------------------------------------------------------
//   grad_pixel[n, d, i] = -2 sum_{p of image n} w_p(i) margin[p, d] (pixel[n, d, i] - embed[p, d]),  w = grad * prob
// Block (x, y) handles pixel blocks x of images y, y + grid_y, ...; each thread loops over its image's proposals
// order[offsets[n] .. offsets[n+1]] (sorted by image, stably: a fixed summation order). kDim-sized arrays with fully
// unrolled loops stay in registers.
template <class Block, typename scalar_t, typename acc_t, int kDim>
COUPLING_HOST_DEVICE void pixel_gradient_block(Block& block, const Inputs<scalar_t, acc_t>& in,
                                               const acc_t* grad_out, const acc_t* prob, const int64_t* order,
                                               const int64_t* offsets, scalar_t* grad_pixels) {
  for (int64_t n = block.index_y(); n < in.num_images; n += block.grid_y()) {
    block.phase([&](int thread) {
      const int64_t begin = offsets[n], end = offsets[n + 1];
      for (int64_t i = block.index_x() * kThreads + thread; i < in.hw; i += block.grid_x() * kThreads) {
        acc_t x[kDim];
        acc_t grad[kDim];
#pragma unroll
        for (int d = 0; d < kDim; ++d) {
          x[d] = d < in.dim ? to_acc(in.pixels[(n * in.dim + d) * in.hw + i], acc_t()) : acc_t(0);
          grad[d] = 0;
        }
        for (int64_t k = begin; k < end; ++k) {
          const int64_t p = order[k];
          const acc_t w = grad_out[p * in.hw + i] * prob[p * in.hw + i];
          if (w == acc_t(0)) continue;
#pragma unroll
          for (int d = 0; d < kDim; ++d) {
            if (d < in.dim) grad[d] -= 2 * w * in.margins[p * in.dim + d] * (x[d] - in.embeds[p * in.dim + d]);
          }
        }
#pragma unroll
        for (int d = 0; d < kDim; ++d) {
          if (d < in.dim) block.store(grad_pixels, (n * in.dim + d) * in.hw + i, static_cast<scalar_t>(grad[d]));
        }
      }
    });
  }
}

// ---- backward: proposal gradients --------------------------------------------------------------------------------
//   grad_embed[p, d]  =  2 margin[p, d] sum_i w_p(i) (pixel_d(i) - embed[p, d])
//   grad_margin[p, d] = -sum_i w_p(i) (pixel_d(i) - embed[p, d])^2
// Block x handles proposal x: stage its embedding; each thread sums over its pixels; each warp sums its threads and
// lane 0 stores the warp's sums; thread d adds up the warps' sums of dimension d. Either output may be null.
template <class Block, typename scalar_t, typename acc_t, int kDim>
COUPLING_HOST_DEVICE void proposal_gradient_block(Block& block, const Inputs<scalar_t, acc_t>& in,
                                                  const acc_t* grad_out, const acc_t* prob,
                                                  ProposalShared<acc_t>& shared, acc_t* grad_embeds,
                                                  acc_t* grad_margins) {
  const int64_t p = block.index_x();
  block.phase([&](int thread) {
    for (int d = thread; d < in.dim; d += kThreads) shared.embed[d] = in.embeds[p * in.dim + d];
  });
  typename Block::template PerThread<ProposalPartials<acc_t, kDim>> partials;
  block.phase([&](int thread) {
    ProposalPartials<acc_t, kDim>& mine = partials[thread];
#pragma unroll
    for (int d = 0; d < kDim; ++d) mine.first[d] = mine.second[d] = 0;
    const scalar_t* image = in.pixels + image_of(in, p) * in.dim * in.hw;
    for (int64_t i = thread; i < in.hw; i += kThreads) {
      const acc_t w = grad_out[p * in.hw + i] * prob[p * in.hw + i];
      if (w == acc_t(0)) continue;
#pragma unroll
      for (int d = 0; d < kDim; ++d) {
        if (d < in.dim) {
          const acc_t diff = to_acc(image[d * in.hw + i], acc_t()) - shared.embed[d];
          mine.first[d] += w * diff;
          mine.second[d] += w * diff * diff;
        }
      }
    }
  });
#pragma unroll
  for (int d = 0; d < kDim; ++d) {
    if (d < in.dim) {  // the same d for the whole block: every lane of a warp takes part in its shuffles
      block.warp_sum([&](int thread) { return partials[thread].first[d]; },
                     [&](int thread, acc_t sum) { if (thread % kWarp == 0) shared.first[thread / kWarp][d] = sum; });
      block.warp_sum([&](int thread) { return partials[thread].second[d]; },
                     [&](int thread, acc_t sum) { if (thread % kWarp == 0) shared.second[thread / kWarp][d] = sum; });
    }
  }
  block.phase([](int) {});  // barrier: every warp's sums are stored
  block.phase([&](int thread) {
    for (int d = thread; d < in.dim; d += kThreads) {
      acc_t first = 0, second = 0;
      for (int warp = 0; warp < kWarps; ++warp) {
        first += shared.first[warp][d];
        second += shared.second[warp][d];
      }
      if (grad_embeds != nullptr) block.store(grad_embeds, p * in.dim + d, 2 * in.margins[p * in.dim + d] * first);
      if (grad_margins != nullptr) block.store(grad_margins, p * in.dim + d, -second);
    }
  });
}

}  // namespace coupling
