// CUDA sliced layernorm (x and parameters float32 or bfloat16; float32 math and statistics),
// same schemas as the CPU kernels. The output, and so the incoming gradient, may have another
// dtype (float32, bfloat16, float16): under autocast the float32 residual stream is normalized
// straight into the bfloat16 the next GEMM reads. One warp per row for the forward and for
// grad_x; grad_weight/grad_bias are reduced over rows in two passes (column tiles x row chunks
// into float32 partial sums, then a sum over chunks) into the first E entries of full-size
// zeros, so a batch of 128 x 197 rows spreads over hundreds of blocks instead of E/32.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>

#include "float_types.cuh"
#include "../layernorm_checks.h"

namespace {

using at::Tensor;

constexpr int kWarp = 32;
constexpr int kRowsPerBlock = 4;   // warps per block in the row kernels
constexpr int kRowLanes = 8;       // row strides per column tile in the parameter-gradient kernel
constexpr int64_t kChunkRows = 256;  // rows per block of the parameter-gradient reduction's first pass

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Block (kWarp, kRowsPerBlock); warp threadIdx.y of block b handles row b*kRowsPerBlock + y.
template <typename T, typename Y>
__global__ void layernorm_forward_kernel(const T* __restrict__ x, const T* __restrict__ w, int64_t w_stride,
                                         const T* __restrict__ b, int64_t b_stride, Y* __restrict__ y,
                                         float* __restrict__ mean, float* __restrict__ rstd, int64_t m, int64_t e,
                                         float eps) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.y;
  if (row >= m) return;  // uniform across the warp, so the shuffles below stay full-warp
  const T* xr = x + row * e;
  float sum = 0.f;
  for (int64_t j = threadIdx.x; j < e; j += kWarp) sum += static_cast<float>(xr[j]);
  const float mu = warp_sum(sum) / static_cast<float>(e);
  float sq = 0.f;
  for (int64_t j = threadIdx.x; j < e; j += kWarp) {
    const float d = static_cast<float>(xr[j]) - mu;
    sq += d * d;
  }
  const float rs = rsqrtf(warp_sum(sq) / static_cast<float>(e) + eps);
  Y* yr = y + row * e;
  for (int64_t j = threadIdx.x; j < e; j += kWarp) {
    const float xhat = (static_cast<float>(xr[j]) - mu) * rs;
    yr[j] = static_cast<Y>(xhat * static_cast<float>(w[j * w_stride]) + static_cast<float>(b[j * b_stride]));
  }
  if (threadIdx.x == 0) {
    mean[row] = mu;
    rstd[row] = rs;
  }
}

// grad_x = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = grad_out * w; layout as the forward.
template <typename T, typename G>
__global__ void layernorm_backward_input_kernel(const G* __restrict__ dy, const T* __restrict__ x,
                                                const T* __restrict__ w, int64_t w_stride,
                                                const float* __restrict__ mean, const float* __restrict__ rstd,
                                                T* __restrict__ dx, int64_t m, int64_t e) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.y;
  if (row >= m) return;
  const G* dyr = dy + row * e;
  const T* xr = x + row * e;
  const float mu = mean[row], rs = rstd[row];
  float sum_g = 0.f, sum_gx = 0.f;
  for (int64_t j = threadIdx.x; j < e; j += kWarp) {
    const float g = static_cast<float>(dyr[j]) * static_cast<float>(w[j * w_stride]);
    sum_g += g;
    sum_gx += g * (static_cast<float>(xr[j]) - mu) * rs;
  }
  const float mean_g = warp_sum(sum_g) / static_cast<float>(e);
  const float mean_gx = warp_sum(sum_gx) / static_cast<float>(e);
  T* dxr = dx + row * e;
  for (int64_t j = threadIdx.x; j < e; j += kWarp) {
    const float g = static_cast<float>(dyr[j]) * static_cast<float>(w[j * w_stride]);
    const float xhat = (static_cast<float>(xr[j]) - mu) * rs;
    dxr[j] = static_cast<T>(rs * (g - mean_g - xhat * mean_gx));
  }
}

// Partial sums over rows [chunk*kChunkRows, (chunk+1)*kChunkRows) of dw[j] = sum_i dy[i,j]*xhat[i,j]
// and db[j] = sum_i dy[i,j], for j < e: part[0][chunk][j] and part[1][chunk][j]. Grid (column
// tiles, row chunks); block (kWarp, kRowLanes) owns kWarp adjacent columns of one chunk, lane y
// sums rows y, y + kRowLanes, ...; lanes meet in shared memory.
template <typename T, typename G>
__global__ void layernorm_backward_params_partial_kernel(const G* __restrict__ dy, const T* __restrict__ x,
                                                         const float* __restrict__ mean,
                                                         const float* __restrict__ rstd, float* __restrict__ part,
                                                         int64_t m, int64_t e) {
  __shared__ float part_w[kRowLanes][kWarp + 1];
  __shared__ float part_b[kRowLanes][kWarp + 1];
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kWarp + threadIdx.x;
  const int64_t row_end = std::min<int64_t>(m, (static_cast<int64_t>(blockIdx.y) + 1) * kChunkRows);
  float acc_w = 0.f, acc_b = 0.f;
  if (col < e) {
    for (int64_t i = static_cast<int64_t>(blockIdx.y) * kChunkRows + threadIdx.y; i < row_end; i += kRowLanes) {
      const float g = static_cast<float>(dy[i * e + col]);
      acc_w += g * (static_cast<float>(x[i * e + col]) - mean[i]) * rstd[i];
      acc_b += g;
    }
  }
  part_w[threadIdx.y][threadIdx.x] = acc_w;
  part_b[threadIdx.y][threadIdx.x] = acc_b;
  __syncthreads();
  if (threadIdx.y == 0 && col < e) {
    for (int k = 1; k < kRowLanes; ++k) {
      acc_w += part_w[k][threadIdx.x];
      acc_b += part_b[k][threadIdx.x];
    }
    const int64_t chunks = gridDim.y;
    part[blockIdx.y * e + col] = acc_w;
    part[(chunks + blockIdx.y) * e + col] = acc_b;
  }
}

// dw[j], db[j] = sums over the row chunks of the partial sums; one thread per column.
template <typename T>
__global__ void layernorm_backward_params_finish_kernel(const float* __restrict__ part, T* __restrict__ dw,
                                                        T* __restrict__ db, int64_t chunks, int64_t e) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= e) return;
  float acc_w = 0.f, acc_b = 0.f;
  for (int64_t c = 0; c < chunks; ++c) {
    acc_w += part[c * e + col];
    acc_b += part[(chunks + c) * e + col];
  }
  dw[col] = static_cast<T>(acc_w);
  db[col] = static_cast<T>(acc_b);
}

void check_cuda_inputs(const char* op, const Tensor& x) {
  TORCH_CHECK(x.is_cuda(), op, ": the CUDA kernel got x on ", x.device());
  const auto t = x.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kBFloat16, op, ": x.dtype=", t, " must be float32 or bfloat16 on CUDA");
}

// Calls f(T{}, Y{}): T the type of x and the parameters (float32 or bfloat16, checked before), Y
// the output's or the incoming gradient's.
template <typename F>
void with_types(at::ScalarType x_type, at::ScalarType other, F&& f) {
  const auto with_x = [&](auto t_tag) {
    focusformer::with_float_type(other, "sliced_layernorm", [&](auto y_tag) { f(t_tag, y_tag); });
  };
  if (x_type == at::kFloat) {
    with_x(float{});
  } else {
    with_x(at::BFloat16{});
  }
}

unsigned int row_blocks(int64_t m) {
  return static_cast<unsigned int>((m + kRowsPerBlock - 1) / kRowsPerBlock);
}

template <typename T, typename Y>
void launch_forward(const Tensor& x, const Tensor& w, const Tensor& b, double eps, Tensor& y, Tensor& mean,
                    Tensor& rstd) {
  const int64_t m = x.size(0), e = x.size(1);
  layernorm_forward_kernel<T, Y><<<row_blocks(m), dim3(kWarp, kRowsPerBlock), 0, c10::cuda::getCurrentCUDAStream()>>>(
      x.const_data_ptr<T>(), w.const_data_ptr<T>(), w.stride(0), b.const_data_ptr<T>(), b.stride(0),
      y.data_ptr<Y>(), mean.data_ptr<float>(), rstd.data_ptr<float>(), m, e, static_cast<float>(eps));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, typename G>
void launch_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd,
                     Tensor& dx, Tensor& dw, Tensor& db) {
  const int64_t m = x.size(0), e = x.size(1);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  layernorm_backward_input_kernel<T, G><<<row_blocks(m), dim3(kWarp, kRowsPerBlock), 0, stream>>>(
      dy.const_data_ptr<G>(), x.const_data_ptr<T>(), w.const_data_ptr<T>(), w.stride(0),
      mean.const_data_ptr<float>(), rstd.const_data_ptr<float>(), dx.data_ptr<T>(), m, e);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t chunks = (m + kChunkRows - 1) / kChunkRows;
  TORCH_CHECK(chunks <= 65535, "sliced_layernorm_backward: M=", m, " rows exceed the CUDA kernel's limit of ",
              65535 * kChunkRows);
  Tensor part = at::empty({2, chunks, e}, x.options().dtype(at::kFloat));
  const dim3 grid(static_cast<unsigned int>((e + kWarp - 1) / kWarp), static_cast<unsigned int>(chunks));
  layernorm_backward_params_partial_kernel<T, G><<<grid, dim3(kWarp, kRowLanes), 0, stream>>>(
      dy.const_data_ptr<G>(), x.const_data_ptr<T>(), mean.const_data_ptr<float>(), rstd.const_data_ptr<float>(),
      part.data_ptr<float>(), m, e);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  constexpr int kFinishThreads = 128;
  const auto finish_blocks = static_cast<unsigned int>((e + kFinishThreads - 1) / kFinishThreads);
  layernorm_backward_params_finish_kernel<T><<<finish_blocks, kFinishThreads, 0, stream>>>(
      part.const_data_ptr<float>(), dw.data_ptr<T>(), db.data_ptr<T>(), chunks, e);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<Tensor, Tensor, Tensor> sliced_layernorm_cuda(const Tensor& x_, const Tensor& weight, const Tensor& bias,
                                                         double eps, std::optional<at::ScalarType> out_dtype) {
  constexpr const char* op = "sliced_layernorm";
  focusformer::check_layernorm_args(op, x_, weight, bias);
  check_cuda_inputs(op, x_);
  const at::ScalarType y_type = out_dtype.value_or(x_.scalar_type());
  TORCH_CHECK(y_type == at::kFloat || y_type == at::kBFloat16 || y_type == at::kHalf, op, ": out_dtype=", y_type,
              " must be float32, bfloat16 or float16 on CUDA");
  const c10::cuda::CUDAGuard guard(x_.device());
  const Tensor x = x_.contiguous();
  Tensor y = at::empty(x.sizes(), x.options().dtype(y_type));
  Tensor mean = at::empty({x.size(0)}, x.options().dtype(at::kFloat));
  Tensor rstd = at::empty({x.size(0)}, x.options().dtype(at::kFloat));
  if (x.size(0) > 0) {
    with_types(x.scalar_type(), y_type, [&](auto t_tag, auto y_tag) {
      launch_forward<decltype(t_tag), decltype(y_tag)>(x, weight, bias, eps, y, mean, rstd);
    });
  }
  return {y, mean, rstd};
}

std::tuple<Tensor, Tensor, Tensor> sliced_layernorm_backward_cuda(const Tensor& grad_out, const Tensor& x_,
                                                                  const Tensor& weight, const Tensor& mean,
                                                                  const Tensor& rstd) {
  constexpr const char* op = "sliced_layernorm_backward";
  focusformer::check_layernorm_backward_args(op, grad_out, x_, weight, mean, rstd);
  check_cuda_inputs(op, x_);
  const auto g = grad_out.scalar_type();
  TORCH_CHECK(g == at::kFloat || g == at::kBFloat16 || g == at::kHalf, op, ": grad_out.dtype=", g,
              " must be float32, bfloat16 or float16 on CUDA");
  const c10::cuda::CUDAGuard guard(x_.device());
  const Tensor dy = grad_out.contiguous(), x = x_.contiguous();
  const Tensor mu = mean.contiguous(), rs = rstd.contiguous();
  Tensor dx = at::empty_like(x);
  Tensor dw = at::zeros({weight.size(0)}, weight.options());
  Tensor db = at::zeros({weight.size(0)}, weight.options());
  if (x.size(0) > 0) {
    with_types(x.scalar_type(), g, [&](auto t_tag, auto g_tag) {
      launch_backward<decltype(t_tag), decltype(g_tag)>(dy, x, weight, mu, rs, dx, dw, db);
    });
  }
  return {dx, dw, db};
}

}  // namespace

TORCH_LIBRARY_IMPL(focusformer, CUDA, m) {
  m.impl("sliced_layernorm", &sliced_layernorm_cuda);
  m.impl("sliced_layernorm_backward", &sliced_layernorm_backward_cuda);
}
