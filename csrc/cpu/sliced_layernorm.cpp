// CPU sliced layernorm over the last dimension E of x [M, E], using weight[:E], bias[:E].
// Statistics and arithmetic in the op-math type (float32 for bfloat16/float32 inputs); the
// row loops are `omp simd` (built with -fopenmp-simd) so the reductions vectorize. An output
// dtype other than x's is a cast of the result; a gradient of another dtype is cast to x's.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>
#include <vector>

#include "../layernorm_checks.h"

namespace {

using at::Tensor;

constexpr int64_t kGrainSize = 32768;  // elements per parallel task, as ATen's GRAIN_SIZE

void check_cpu_dtype(const char* op, const Tensor& x) {
  const auto t = x.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kDouble || t == at::kBFloat16, op, ": x.dtype=", t,
              " must be float32, float64 or bfloat16");
}

int64_t row_grain(int64_t e) {
  return std::max<int64_t>(1, kGrainSize / (4 * e));
}

template <typename scalar_t>
void layernorm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps, Tensor& out,
                       Tensor& mean, Tensor& rstd) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t m = x.size(0), e = x.size(1);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* wp = weight.const_data_ptr<scalar_t>();
  const scalar_t* bp = bias.const_data_ptr<scalar_t>();
  scalar_t* yp = out.data_ptr<scalar_t>();
  acc_t* mp = mean.data_ptr<acc_t>();
  acc_t* rp = rstd.data_ptr<acc_t>();
  at::parallel_for(0, m, row_grain(e), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t* xr = xp + i * e;
      acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < e; ++j) sum += static_cast<acc_t>(xr[j]);
      const acc_t mu = sum / e;
      acc_t sq = 0;
#pragma omp simd reduction(+ : sq)
      for (int64_t j = 0; j < e; ++j) {
        const acc_t d = static_cast<acc_t>(xr[j]) - mu;
        sq += d * d;
      }
      const acc_t rs = acc_t(1) / std::sqrt(sq / e + static_cast<acc_t>(eps));
      scalar_t* yr = yp + i * e;
#pragma omp simd
      for (int64_t j = 0; j < e; ++j) {
        const acc_t xhat = (static_cast<acc_t>(xr[j]) - mu) * rs;
        yr[j] = static_cast<scalar_t>(xhat * static_cast<acc_t>(wp[j]) + static_cast<acc_t>(bp[j]));
      }
      mp[i] = mu;
      rp[i] = rs;
    }
  });
}

// grad_x per row; grad_weight/grad_bias[:E] summed over rows: each of `chunks` row ranges
// accumulates its own partial sums, added up in chunk order afterwards.
template <typename scalar_t>
void layernorm_backward(const Tensor& grad_out, const Tensor& x, const Tensor& weight, const Tensor& mean,
                        const Tensor& rstd, Tensor& grad_x, Tensor& grad_w, Tensor& grad_b) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t m = x.size(0), e = x.size(1);
  const scalar_t* gp = grad_out.const_data_ptr<scalar_t>();
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* wp = weight.const_data_ptr<scalar_t>();
  const acc_t* mp = mean.const_data_ptr<acc_t>();
  const acc_t* rp = rstd.const_data_ptr<acc_t>();
  scalar_t* dxp = grad_x.data_ptr<scalar_t>();
  const int64_t chunks = std::min<int64_t>(m, at::get_num_threads());
  const int64_t rows_per_chunk = (m + chunks - 1) / chunks;
  std::vector<acc_t> partial(static_cast<size_t>(chunks * 2 * e), acc_t(0));
  at::parallel_for(0, chunks, 1, [&](int64_t cbegin, int64_t cend) {
    for (int64_t c = cbegin; c < cend; ++c) {
      acc_t* pw = partial.data() + c * 2 * e;
      acc_t* pb = pw + e;
      for (int64_t i = c * rows_per_chunk; i < std::min(m, (c + 1) * rows_per_chunk); ++i) {
        const scalar_t* gr = gp + i * e;
        const scalar_t* xr = xp + i * e;
        const acc_t mu = mp[i], rs = rp[i];
        acc_t sum_g = 0, sum_gx = 0;
#pragma omp simd reduction(+ : sum_g, sum_gx)
        for (int64_t j = 0; j < e; ++j) {
          const acc_t dy = static_cast<acc_t>(gr[j]);
          const acc_t xhat = (static_cast<acc_t>(xr[j]) - mu) * rs;
          const acc_t g = dy * static_cast<acc_t>(wp[j]);
          sum_g += g;
          sum_gx += g * xhat;
          pw[j] += dy * xhat;
          pb[j] += dy;
        }
        const acc_t mean_g = sum_g / e, mean_gx = sum_gx / e;
        scalar_t* dxr = dxp + i * e;
#pragma omp simd
        for (int64_t j = 0; j < e; ++j) {
          const acc_t xhat = (static_cast<acc_t>(xr[j]) - mu) * rs;
          const acc_t g = static_cast<acc_t>(gr[j]) * static_cast<acc_t>(wp[j]);
          dxr[j] = static_cast<scalar_t>(rs * (g - mean_g - xhat * mean_gx));
        }
      }
    }
  });
  scalar_t* dwp = grad_w.data_ptr<scalar_t>();
  scalar_t* dbp = grad_b.data_ptr<scalar_t>();
  for (int64_t j = 0; j < e; ++j) {
    acc_t sw = 0, sb = 0;
    for (int64_t c = 0; c < chunks; ++c) {
      sw += partial[c * 2 * e + j];
      sb += partial[c * 2 * e + e + j];
    }
    dwp[j] = static_cast<scalar_t>(sw);
    dbp[j] = static_cast<scalar_t>(sb);
  }
}

std::tuple<Tensor, Tensor, Tensor> sliced_layernorm_cpu(const Tensor& x_, const Tensor& weight,
                                                        const Tensor& bias, double eps,
                                                        std::optional<at::ScalarType> out_dtype) {
  constexpr const char* op = "sliced_layernorm";
  focusformer::check_layernorm_args(op, x_, weight, bias);
  check_cpu_dtype(op, x_);
  // 1-D parameters are contiguous in practice; a strided view would be copied (E_max values).
  const Tensor x = x_.contiguous(), w = weight.contiguous(), b = bias.contiguous();
  const auto stat = x.options().dtype(focusformer::layernorm_stat_type(x.scalar_type()));
  Tensor out = at::empty_like(x);
  Tensor mean = at::empty({x.size(0)}, stat);
  Tensor rstd = at::empty({x.size(0)}, stat);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), op,
                                 [&] { layernorm_forward<scalar_t>(x, w, b, eps, out, mean, rstd); });
  if (out_dtype && *out_dtype != x.scalar_type()) out = out.to(*out_dtype);
  return {out, mean, rstd};
}

std::tuple<Tensor, Tensor, Tensor> sliced_layernorm_backward_cpu(const Tensor& grad_out_, const Tensor& x_,
                                                                 const Tensor& weight, const Tensor& mean_,
                                                                 const Tensor& rstd_) {
  constexpr const char* op = "sliced_layernorm_backward";
  focusformer::check_layernorm_backward_args(op, grad_out_, x_, weight, mean_, rstd_);
  check_cpu_dtype(op, x_);
  const Tensor grad_out = grad_out_.to(x_.scalar_type()).contiguous(), x = x_.contiguous(), w = weight.contiguous();
  const Tensor mean = mean_.contiguous(), rstd = rstd_.contiguous();
  Tensor grad_x = at::empty_like(x);
  Tensor grad_w = at::zeros({weight.size(0)}, weight.options());
  Tensor grad_b = at::zeros({weight.size(0)}, weight.options());
  if (x.size(0) > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), op, [&] {
      layernorm_backward<scalar_t>(grad_out, x, w, mean, rstd, grad_x, grad_w, grad_b);
    });
  }
  return {grad_x, grad_w, grad_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(focusformer, CPU, m) {
  m.impl("sliced_layernorm", &sliced_layernorm_cpu);
  m.impl("sliced_layernorm_backward", &sliced_layernorm_backward_cpu);
}
