// Python bindings of the fused coupling on CUDA (coupling_kernel.cu). The wrapper in adet/layers/coupling_fused.py
// promotes dtypes and makes inputs contiguous; coupling_op.h checks everything again before any launch.
#include <torch/extension.h>

#include <vector>

at::Tensor coupling_forward_cuda(const at::Tensor& pixels, const at::Tensor& embeds, const at::Tensor& margins,
                                 const at::Tensor& images);
std::vector<at::Tensor> coupling_backward_cuda(const at::Tensor& grad_out, const at::Tensor& prob,
                                               const at::Tensor& pixels, const at::Tensor& embeds,
                                               const at::Tensor& margins, const at::Tensor& images, bool need_pixels,
                                               bool need_embeds, bool need_margins);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &coupling_forward_cuda, "fused embedding coupling, forward (CUDA)");
  m.def("backward", &coupling_backward_cuda, "fused embedding coupling, backward (CUDA); undefined = not needed");
}
