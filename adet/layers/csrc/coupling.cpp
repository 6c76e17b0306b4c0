// Python bindings of the fused coupling kernels (adet/layers/csrc/coupling_kernel.cu). The Python wrapper
// (adet/layers/coupling.py) makes the inputs contiguous and checks their shapes before calling these.
#include <torch/extension.h>

#include <vector>

at::Tensor coupling_forward_cuda(const at::Tensor& pixels, const at::Tensor& embeds, const at::Tensor& margins,
                                 const at::Tensor& images);
std::vector<at::Tensor> coupling_backward_cuda(const at::Tensor& grad_out, const at::Tensor& prob,
                                               const at::Tensor& pixels, const at::Tensor& embeds,
                                               const at::Tensor& margins, const at::Tensor& images);

namespace {

void check(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

at::Tensor forward(const at::Tensor& pixels, const at::Tensor& embeds, const at::Tensor& margins,
                   const at::Tensor& images) {
  check(pixels, "pixel_embeddings");
  check(embeds, "proposal_embeddings");
  check(margins, "proposal_margins");
  check(images, "image_indices");
  TORCH_CHECK(pixels.size(1) <= 64, "the fused coupling supports embedding dimensions up to 64");
  TORCH_CHECK(embeds.scalar_type() == pixels.scalar_type() && margins.scalar_type() == pixels.scalar_type(),
              "pixel and proposal embeddings and margins must have one dtype");
  return coupling_forward_cuda(pixels, embeds, margins, images);
}

std::vector<at::Tensor> backward(const at::Tensor& grad_out, const at::Tensor& prob, const at::Tensor& pixels,
                                 const at::Tensor& embeds, const at::Tensor& margins, const at::Tensor& images) {
  check(grad_out, "grad_output");
  check(prob, "probabilities");
  TORCH_CHECK(grad_out.scalar_type() == prob.scalar_type(), "grad_output must have the probabilities' dtype");
  return coupling_backward_cuda(grad_out, prob, pixels, embeds, margins, images);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "fused embedding coupling, forward (CUDA)");
  m.def("backward", &backward, "fused embedding coupling, backward (CUDA)");
}
