// Shape checks shared by the CPU and CUDA sliced linear kernels. Each kernel checks its own
// dtype and device rules.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace focusformer {

// Sizes of one call: x [m, k], weight [groups*o_max, k_max], output [m, groups*o].
struct LinearSlice {
  int64_t m, k, o, o_max, groups;
  int64_t n() const { return groups * o; }
};

inline LinearSlice check_linear_shapes(const char* op, const at::Tensor& x, const at::Tensor& weight,
                                       int64_t out_features, int64_t groups) {
  TORCH_CHECK(x.dim() == 2, op, ": x must be 2-D [M, K], got shape ", x.sizes());
  TORCH_CHECK(weight.dim() == 2, op, ": weight must be 2-D [groups*O_max, K_max], got shape ", weight.sizes());
  TORCH_CHECK(groups >= 1 && weight.size(0) % groups == 0, op, ": groups=", groups,
              " must be >= 1 and divide weight.shape[0]=", weight.size(0));
  const int64_t o_max = weight.size(0) / groups;
  TORCH_CHECK(out_features >= 1 && out_features <= o_max, op, ": out_features=", out_features, " must be in [1, ",
              o_max, "] (weight.shape[0] / groups)");
  TORCH_CHECK(x.size(1) >= 1 && x.size(1) <= weight.size(1), op, ": x.shape[1]=", x.size(1), " must be in [1, ",
              weight.size(1), "] (weight.shape[1])");
  return {x.size(0), x.size(1), out_features, o_max, groups};
}

// The same product with the groups merged into one when every group uses all of its rows: the
// used rows are then contiguous, and one GEMM of groups*o rows does the work of `groups` GEMMs
// (the output and gradient layouts are unchanged, since column g*o + j is row g*o_max + j).
inline LinearSlice merge_full_groups(const LinearSlice& s) {
  if (s.groups > 1 && s.o == s.o_max) return {s.m, s.k, s.groups * s.o, s.groups * s.o_max, 1};
  return s;
}

// An [m, n] activation argument (residual, grad_out, preact).
inline void check_activation_shape(const char* op, const char* name, const at::Tensor& t, const LinearSlice& s) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == s.m && t.size(1) == s.n(), op, ": ", name, " must have shape [", s.m,
              ", ", s.n(), "] ([M, groups*out_features]), got ", t.sizes());
}

// bias [groups*O_max] (weight.shape[0]).
inline void check_bias_shape(const char* op, const at::Tensor& bias, const at::Tensor& weight) {
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == weight.size(0), op, ": bias must have shape [", weight.size(0),
              "] (weight.shape[0]), got ", bias.sizes());
}

// The tensor a GEMM reads for `param` (the weight or the bias): `cast` when given, which must have
// the parameter's shape and lie on x's device, else the parameter itself.
inline const at::Tensor& operand(const char* op, const char* name, const at::Tensor& param,
                                 const std::optional<at::Tensor>& cast, const at::Tensor& x) {
  if (!cast) return param;
  TORCH_CHECK(cast->sizes() == param.sizes(), op, ": ", name, "_cast shape ", cast->sizes(), " must equal ", name,
              " shape ", param.sizes());
  TORCH_CHECK(cast->device() == x.device(), op, ": ", name, "_cast is on ", cast->device(), " but x is on ",
              x.device());
  return *cast;
}

// Gradients are returned in the parameters' dtype: a floating dtype.
inline void check_param_dtype(const char* op, const at::Tensor& weight) {
  TORCH_CHECK(at::isFloatingType(weight.scalar_type()), op, ": weight.dtype=", weight.scalar_type(),
              " must be a floating dtype");
}

}  // namespace focusformer
