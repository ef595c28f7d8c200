// Schemas of the compiled focusformer ops. Kernels register per device in cpu/*.cpp and
// cuda/*.cu. FRAGMENT: Python code defines further ops in the same namespace.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(focusformer, m) {
  m.def(
      "sliced_linear_cpp(Tensor x, Tensor weight, Tensor? bias, int out_features, int groups, "
      "bool gelu, Tensor? residual) -> (Tensor, Tensor)");
  m.def(
      "sliced_linear_backward_cpp(Tensor grad_out, Tensor x, Tensor weight, Tensor preact, "
      "int out_features, int groups, bool gelu) -> (Tensor, Tensor, Tensor)");
  m.def("sliced_layernorm_cpp(Tensor x, Tensor weight, Tensor bias, float eps) -> (Tensor, Tensor, Tensor)");
  m.def(
      "sliced_layernorm_backward_cpp(Tensor grad_out, Tensor x, Tensor weight, Tensor mean, "
      "Tensor rstd) -> (Tensor, Tensor, Tensor)");
}
