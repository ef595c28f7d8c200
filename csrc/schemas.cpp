// Schemas of the compiled focusformer ops. Kernels register per device in cpu/*.cpp and
// cuda/*.cu; fake kernels and autograd formulas in focusformer_fast/ops/compiled.py.
// FRAGMENT: Python code defines further ops in the same namespace (the Triton ones).
//
// sliced_linear: out = act(x @ W_s^T + b_s) + residual. `weight` and `bias` are the parameters
// (their dtypes are the gradients'); the GEMM reads `weight_cast` (a copy in x's dtype) and the
// epilogue `bias_cast` when given, else the parameters themselves.
// sliced_layernorm: `out_dtype` is the output's dtype (default x's); statistics in float32.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(focusformer, m) {
  m.def(
      "sliced_linear(Tensor x, Tensor weight, Tensor? bias, int out_features, int groups, bool gelu, "
      "Tensor? residual, Tensor? weight_cast=None, Tensor? bias_cast=None) -> (Tensor, Tensor)");
  m.def(
      "sliced_linear_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor? weight_cast, Tensor preact, "
      "int out_features, int groups, bool gelu) -> (Tensor, Tensor, Tensor)");
  m.def(
      "sliced_layernorm(Tensor x, Tensor weight, Tensor bias, float eps, ScalarType? out_dtype=None) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "sliced_layernorm_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor mean, Tensor rstd) "
      "-> (Tensor, Tensor, Tensor)");
}
