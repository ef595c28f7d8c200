// CPU sliced linear. The GEMMs (bias included) run on strided views of the super-weight
// (never a copy of a slice) and write straight into column blocks of the output. One
// parallel pass over row blocks then applies exact GELU and adds the residual, each block
// finished while it is in cache, with ATen's vectorized kernels in the op-math type
// (float32 for bfloat16: the GEMM result and the output are each rounded once). Backward
// writes the weight gradient into the used slice of a full-size zero gradient, in the
// parameter's dtype (the GEMMs read `weight_cast`, in x's dtype, when one is given).
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/gelu_backward.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>

#include "../linear_checks.h"

namespace {

using at::Tensor;

constexpr int64_t kBlockElements = 1 << 16;  // epilogue block: 256 KiB of float32

using Slice = focusformer::LinearSlice;

// `w` is the tensor the GEMMs read (the weight or its cast); `weight` the parameter.
Slice check_linear_args(const char* op, const Tensor& x, const Tensor& weight, const Tensor& w,
                        int64_t out_features, int64_t groups) {
  const Slice s = focusformer::check_linear_shapes(op, x, weight, out_features, groups);
  focusformer::check_param_dtype(op, weight);
  const auto t = x.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kDouble || t == at::kBFloat16, op, ": x.dtype=", t,
              " must be float32, float64 or bfloat16");
  TORCH_CHECK(w.scalar_type() == t, op, ": ", &w == &weight ? "weight" : "weight_cast", ".dtype=", w.scalar_type(),
              " must equal x.dtype=", t);
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu(), op, ": x and weight must be CPU tensors, got ",
              x.device(), " and ", weight.device());
  return s;
}

// An [m, n] tensor argument of x's dtype on the CPU (residual, grad_out, preact).
void check_activation(const char* op, const char* name, const Tensor& t, const Slice& s, const Tensor& x) {
  focusformer::check_activation_shape(op, name, t, s);
  TORCH_CHECK(t.scalar_type() == x.scalar_type() && t.device().is_cpu(), op, ": ", name, " (", t.scalar_type(),
              " on ", t.device(), ") must be a CPU tensor of x.dtype=", x.scalar_type());
}

// Rows [g*o_max, g*o_max + o) and columns [0, k) of a [groups*o_max, k_max] tensor: a view.
Tensor group_slice(const Tensor& full, const Slice& s, int64_t g) {
  return full.narrow(0, g * s.o_max, s.o).narrow(1, 0, s.k);
}

// Rows [r0, r1) of the epilogue: out = act(z) + residual, where z = x @ W_s^T + b is held in
// `preact` when GELU is applied, else in `out`.
void finish_block(const Tensor& out, const Tensor& z_all, const std::optional<Tensor>& residual, bool apply_gelu,
                  int64_t r0, int64_t r1) {
  const at::ScalarType acc_type = at::toOpMathType(out.scalar_type());
  const bool in_place = acc_type == out.scalar_type();  // float32, float64: finish in the output itself
  const Tensor z = z_all.narrow(0, r0, r1 - r0);
  Tensor y = out.narrow(0, r0, r1 - r0);
  Tensor acc = in_place ? z : z.to(acc_type);
  if (apply_gelu) {
    Tensor act = in_place ? y : acc;
    at::gelu_out(act, acc);
    acc = act;
  }
  if (residual) acc.add_(residual->narrow(0, r0, r1 - r0));
  if (!in_place) y.copy_(acc);
}

std::tuple<Tensor, Tensor> sliced_linear_cpu(const Tensor& x_, const Tensor& weight,
                                             const std::optional<Tensor>& bias_param, int64_t out_features,
                                             int64_t groups, bool apply_gelu, const std::optional<Tensor>& residual_,
                                             const std::optional<Tensor>& weight_cast,
                                             const std::optional<Tensor>& bias_cast) {
  constexpr const char* op = "sliced_linear";
  const Tensor& w = focusformer::operand(op, "weight", weight, weight_cast, x_);
  const Slice s = focusformer::merge_full_groups(check_linear_args(op, x_, weight, w, out_features, groups));
  std::optional<Tensor> bias;
  if (bias_param) {
    focusformer::check_bias_shape(op, *bias_param, weight);
    bias = focusformer::operand(op, "bias", *bias_param, bias_cast, x_);
    TORCH_CHECK(bias->scalar_type() == x_.scalar_type() && bias->device().is_cpu(), op, ": bias (",
                bias->scalar_type(), " on ", bias->device(), ") must be a CPU tensor of x.dtype=", x_.scalar_type());
  }
  std::optional<Tensor> residual;
  if (residual_) {
    check_activation(op, "residual", *residual_, s, x_);
    residual = residual_->contiguous();
  }
  const Tensor x = x_.contiguous();
  Tensor out = at::empty({s.m, s.n()}, x.options());
  Tensor preact = apply_gelu ? at::empty({s.m, s.n()}, x.options()) : at::empty({0}, x.options());
  const Tensor& z = apply_gelu ? preact : out;
  for (int64_t g = 0; g < s.groups; ++g) {
    Tensor z_g = z.narrow(1, g * s.o, s.o);
    const Tensor w_t = group_slice(w, s, g).t();
    if (bias) {
      at::addmm_out(z_g, bias->narrow(0, g * s.o_max, s.o), x, w_t);
    } else {
      at::mm_out(z_g, x, w_t);
    }
  }
  if (apply_gelu || residual) {
    const int64_t rows = std::max<int64_t>(1, kBlockElements / s.n());
    at::parallel_for(0, s.m, rows, [&](int64_t begin, int64_t end) {
      for (int64_t r0 = begin; r0 < end; r0 += rows) {
        finish_block(out, z, residual, apply_gelu, r0, std::min(end, r0 + rows));
      }
    });
  }
  return {out, preact};
}

std::tuple<Tensor, Tensor, Tensor> sliced_linear_backward_cpu(const Tensor& grad_out_, const Tensor& x_,
                                                              const Tensor& weight,
                                                              const std::optional<Tensor>& weight_cast,
                                                              const Tensor& preact, int64_t out_features,
                                                              int64_t groups, bool apply_gelu) {
  constexpr const char* op = "sliced_linear_backward";
  const Tensor& w = focusformer::operand(op, "weight", weight, weight_cast, x_);
  const Slice s = focusformer::merge_full_groups(check_linear_args(op, x_, weight, w, out_features, groups));
  check_activation(op, "grad_out", grad_out_, s, x_);
  if (apply_gelu) check_activation(op, "preact", preact, s, x_);
  const Tensor x = x_.contiguous();
  const Tensor grad_z = apply_gelu ? at::gelu_backward(grad_out_, preact) : grad_out_.contiguous();
  Tensor grad_x = at::empty({s.m, s.k}, x.options());
  Tensor grad_w = at::zeros(weight.sizes(), weight.options());
  Tensor grad_b = at::zeros({weight.size(0)}, weight.options());
  const bool same_type = weight.scalar_type() == x.scalar_type();
  for (int64_t g = 0; g < s.groups; ++g) {
    const Tensor grad_z_g = grad_z.narrow(1, g * s.o, s.o);
    const Tensor w_g = group_slice(w, s, g);
    if (g == 0) {
      at::mm_out(grad_x, grad_z_g, w_g);
    } else {
      grad_x.addmm_(grad_z_g, w_g);
    }
    Tensor grad_w_g = group_slice(grad_w, s, g);
    if (same_type) {
      at::mm_out(grad_w_g, grad_z_g.t(), x);
    } else {
      grad_w_g.copy_(at::mm(grad_z_g.t(), x));
    }
    Tensor grad_b_g = grad_b.narrow(0, g * s.o_max, s.o);
    at::sum_out(grad_b_g, grad_z_g, at::IntArrayRef{0}, false, grad_b.scalar_type());
  }
  return {grad_x, grad_w, grad_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(focusformer, CPU, m) {
  m.impl("sliced_linear", &sliced_linear_cpu);
  m.impl("sliced_linear_backward", &sliced_linear_backward_cpu);
}
