// The fused coupling's CUDA kernels replayed on the CPU, to test them where there is no GPU.
//
// The block programs of coupling_kernels.h run here with an EmulatedBlock over exactly the grids the GPU launches
// (coupling_op.h, shared with coupling_kernel.cu), deterministically:
//   - a phase runs its body for threads 0 .. kThreads-1 in turn, so every thread finishes it before any thread starts
//     the next phase, which is what __syncthreads() guarantees;
//   - a warp sum replays __shfl_down_sync lane by lane: at each offset every lane adds what the lane `offset` above
//     held before the step, and a lane with no lane above (lane + offset >= 32) adds its own value, as the hardware
//     returns the caller's own value then;
//   - every store to an output is counted: a launch in which an element is written never, twice, or outside the
//     outputs is an error (on a GPU: a missing result, a race or wasted work);
//   - outputs and shared memory start as NaN, so a read of shared memory that no phase staged shows up in the
//     results.
// Built with the host compiler only (torch.utils.cpp_extension, cached); see adet/layers/coupling_fused.py.
#include <torch/extension.h>

#include <limits>
#include <vector>

#include "coupling_op.h"

namespace coupling {
namespace {

// Counts the stores of one launch into each of its outputs.
class WriteLog {
 public:
  template <typename T>
  void track(const T* output, int64_t count, const char* name) {
    if (output != nullptr) outputs_.push_back({reinterpret_cast<const char*>(output), sizeof(T), name,
                                               std::vector<int>(static_cast<size_t>(count))});
  }

  template <typename T>
  void record(const T* address) {
    const char* byte = reinterpret_cast<const char*>(address);
    for (auto& output : outputs_) {
      if (byte >= output.base && byte < output.base + output.element_size * output.counts.size()) {
        ++output.counts[(byte - output.base) / output.element_size];
        return;
      }
    }
    TORCH_CHECK(false, "emulated kernel wrote outside its outputs");
  }

  void check(const char* kernel) const {
    for (const auto& output : outputs_) {
      for (size_t k = 0; k < output.counts.size(); ++k) {
        TORCH_CHECK(output.counts[k] == 1, kernel, ": element ", k, " of ", output.name, " was written ",
                    output.counts[k], " times (once expected)");
      }
    }
  }

 private:
  struct Output {
    const char* base;
    size_t element_size;
    const char* name;
    std::vector<int> counts;
  };
  std::vector<Output> outputs_;
};

class EmulatedBlock {
 public:
  template <typename T>
  struct PerThread {
    std::vector<T> values = std::vector<T>(kThreads);
    T& operator[](int thread) { return values[thread]; }
  };

  EmulatedBlock(Grid grid, int64_t x, int64_t y, WriteLog& log) : grid_(grid), x_(x), y_(y), log_(log) {}
  int64_t index_x() const { return x_; }
  int64_t index_y() const { return y_; }
  int64_t grid_x() const { return grid_.x; }
  int64_t grid_y() const { return grid_.y; }

  template <class Body>
  void phase(Body&& body) {
    for (int thread = 0; thread < kThreads; ++thread) body(thread);
  }

  template <typename T>
  void store(T* output, int64_t index, T value) {
    log_.record(output + index);
    output[index] = value;
  }

  template <class Value, class Store>
  void warp_sum(Value&& value, Store&& store) {
    using T = decltype(value(0));
    for (int warp = 0; warp < kWarps; ++warp) {
      T lanes[kWarp];
      for (int lane = 0; lane < kWarp; ++lane) lanes[lane] = value(warp * kWarp + lane);
      for (int offset = kWarp / 2; offset > 0; offset >>= 1) {
        T before[kWarp];
        for (int lane = 0; lane < kWarp; ++lane) before[lane] = lanes[lane];
        for (int lane = 0; lane < kWarp; ++lane) {
          lanes[lane] += lane + offset < kWarp ? before[lane + offset] : before[lane];
        }
      }
      for (int lane = 0; lane < kWarp; ++lane) store(warp * kWarp + lane, lanes[lane]);
    }
  }

 private:
  Grid grid_;
  int64_t x_, y_;
  WriteLog& log_;
};

template <typename T>
void fill_nan(T* values, size_t count) {
  for (size_t k = 0; k < count; ++k) values[k] = std::numeric_limits<T>::quiet_NaN();
}

// Calls run(block) for every block of the grid, in order, then checks that each output element was stored once.
template <class Run>
void launch(const char* kernel, Grid grid, WriteLog& log, Run&& run) {
  for (int64_t y = 0; y < grid.y; ++y) {
    for (int64_t x = 0; x < grid.x; ++x) {
      EmulatedBlock block(grid, x, y, log);
      run(block);
    }
  }
  log.check(kernel);
}

struct EmulatorBackend {
  static bool on_device(const at::Tensor& t) { return t.device().is_cpu(); }
  static at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
    return at::full(sizes, std::numeric_limits<double>::quiet_NaN(), options);
  }

  template <typename scalar_t, typename acc_t>
  static void forward(Grid grid, const Inputs<scalar_t, acc_t>& in, acc_t* out) {
    WriteLog log;
    log.track(out, in.num_proposals * in.hw, "the probabilities");
    launch("forward", grid, log, [&](EmulatedBlock& block) {
      acc_t s_embed[kMaxDim], s_margin[kMaxDim];
      fill_nan(s_embed, kMaxDim);
      fill_nan(s_margin, kMaxDim);
      forward_block(block, in, s_embed, s_margin, out);
    });
  }

  template <typename scalar_t, typename acc_t, int kDim>
  static void pixel_gradients(Grid grid, const Inputs<scalar_t, acc_t>& in, const acc_t* grad_out, const acc_t* prob,
                              const int64_t* order, const int64_t* offsets, scalar_t* grad_pixels) {
    WriteLog log;
    log.track(grad_pixels, in.num_images * in.dim * in.hw, "the pixel gradients");
    launch("pixel gradients", grid, log, [&](EmulatedBlock& block) {
      pixel_gradient_block<EmulatedBlock, scalar_t, acc_t, kDim>(block, in, grad_out, prob, order, offsets,
                                                                 grad_pixels);
    });
  }

  template <typename scalar_t, typename acc_t, int kDim>
  static void proposal_gradients(Grid grid, const Inputs<scalar_t, acc_t>& in, const acc_t* grad_out,
                                 const acc_t* prob, acc_t* grad_embeds, acc_t* grad_margins) {
    WriteLog log;
    log.track(grad_embeds, in.num_proposals * in.dim, "the embedding gradients");
    log.track(grad_margins, in.num_proposals * in.dim, "the margin gradients");
    ProposalShared<acc_t> shared;
    launch("proposal gradients", grid, log, [&](EmulatedBlock& block) {
      fill_nan(shared.embed, kMaxDim);
      fill_nan(&shared.first[0][0], kWarps * kMaxDim);
      fill_nan(&shared.second[0][0], kWarps * kMaxDim);
      proposal_gradient_block<EmulatedBlock, scalar_t, acc_t, kDim>(block, in, grad_out, prob, shared, grad_embeds,
                                                                    grad_margins);
    });
  }
};

at::Tensor emulated_forward(const at::Tensor& pixels, const at::Tensor& embeds, const at::Tensor& margins,
                            const at::Tensor& images) {
  return forward<EmulatorBackend>(pixels, embeds, margins, images);
}

std::vector<at::Tensor> emulated_backward(const at::Tensor& grad_out, const at::Tensor& prob,
                                          const at::Tensor& pixels, const at::Tensor& embeds,
                                          const at::Tensor& margins, const at::Tensor& images, bool need_pixels,
                                          bool need_embeds, bool need_margins) {
  return backward<EmulatorBackend>(grad_out, prob, pixels, embeds, margins, images, need_pixels, need_embeds,
                                   need_margins);
}

}  // namespace
}  // namespace coupling

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &coupling::emulated_forward, "the CUDA coupling forward, emulated on the CPU");
  m.def("backward", &coupling::emulated_backward, "the CUDA coupling backward, emulated on the CPU");
}
