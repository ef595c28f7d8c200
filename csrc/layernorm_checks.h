// Argument checks shared by the CPU and CUDA sliced layernorm kernels. Each kernel checks
// its own dtype set.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>

namespace focusformer {

// dtype of mean/rstd for inputs of dtype `t`: float32, or float64 for float64 inputs.
inline at::ScalarType layernorm_stat_type(at::ScalarType t) {
  return at::toOpMathType(t);
}

inline void check_like_x(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": ", name, ".dtype=", t.scalar_type(),
              " must equal x.dtype=", x.scalar_type());
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but x is on ", x.device(),
              "; all tensors must be on one device");
}

// x [M, E] with E >= 1; weight [E_max] with E_max >= E, of x's dtype and device.
inline void check_layernorm_x_weight(const char* op, const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) >= 1, op, ": x must be 2-D [M, E] with E >= 1, got shape ",
              x.sizes());
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) >= x.size(1), op,
              ": weight must be 1-D [E_max] with E_max >= E=", x.size(1), ", got shape ", weight.sizes());
  check_like_x(op, "weight", weight, x);
}

// Forward: bias has weight's shape.
inline void check_layernorm_args(const char* op, const at::Tensor& x, const at::Tensor& weight,
                                 const at::Tensor& bias) {
  check_layernorm_x_weight(op, x, weight);
  TORCH_CHECK(bias.sizes() == weight.sizes(), op, ": bias shape ", bias.sizes(), " must equal weight shape ",
              weight.sizes());
  check_like_x(op, "bias", bias, x);
}

// Backward: grad_out of x's shape and device (any floating dtype: the forward's output dtype);
// mean, rstd [M] of layernorm_stat_type(x.dtype).
inline void check_layernorm_backward_args(const char* op, const at::Tensor& grad_out, const at::Tensor& x,
                                          const at::Tensor& weight, const at::Tensor& mean,
                                          const at::Tensor& rstd) {
  check_layernorm_x_weight(op, x, weight);
  TORCH_CHECK(grad_out.sizes() == x.sizes(), op, ": grad_out shape ", grad_out.sizes(),
              " must equal x shape ", x.sizes());
  TORCH_CHECK(at::isFloatingType(grad_out.scalar_type()), op, ": grad_out.dtype=", grad_out.scalar_type(),
              " must be a floating dtype");
  TORCH_CHECK(grad_out.device() == x.device(), op, ": grad_out is on ", grad_out.device(), " but x is on ",
              x.device());
  const at::ScalarType stat = layernorm_stat_type(x.scalar_type());
  TORCH_CHECK(mean.dim() == 1 && mean.size(0) == x.size(0) && mean.scalar_type() == stat, op,
              ": mean (shape ", mean.sizes(), ", dtype ", mean.scalar_type(), ") must be [", x.size(0),
              "] of dtype ", stat);
  TORCH_CHECK(rstd.sizes() == mean.sizes() && rstd.scalar_type() == stat, op, ": rstd (shape ", rstd.sizes(),
              ", dtype ", rstd.scalar_type(), ") must be [", x.size(0), "] of dtype ", stat);
  TORCH_CHECK(mean.device() == x.device() && rstd.device() == x.device(), op,
              ": mean and rstd must be on x's device ", x.device());
}

}  // namespace focusformer
