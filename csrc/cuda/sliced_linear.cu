// CUDA sliced linear on cuBLASLt, same schemas as the CPU kernels (float32, bfloat16, float16).
//
// Row-major tensors are handed to cuBLASLt (column-major) as their transposes, so every GEMM
// below is written in cuBLASLt's column-major terms:
//   forward  Z_g^T [o, m]  = W_g [o, k] (stored k x o, ld = weight.stride(0))^T · X^T [k, m]
//   grad X   dX^T  [k, m] += W_g (stored k x o)                               · dZ_g^T [o, m]
//   grad W   dW_g^T [k, o] = X^T [k, m]                                       · dZ_g [m, o]
// The super-weight slice W_g is read in place (its row stride is the leading dimension), Z_g and
// dZ_g are column blocks of [m, groups*o] tensors (leading dimension groups*o), and dW_g lands in
// the used slice of a full-size zero gradient (leading dimension k_max). The bias is added by
// the GEMM epilogue and a residual as the GEMM's C operand (C != D: no copy). cuBLASLt's GELU
// epilogue is the tanh approximation, so the exact GELU (and its derivative) runs in one
// elementwise kernel beside the GEMMs.
//
// With bfloat16/float16 x and weight, a float32 residual gives a float32 output (the fp32
// residual stream of bf16 mixed precision): the GEMM reads and writes float32 C/D. The GEMMs read
// `weight_cast` (the super-weight's copy in x's dtype, made once per optimizer step by the
// caller) when one is given, and the weight gradient is written in the parameter's dtype (bf16 A
// and B, fp32 D). Every operand's alignment (address and leading dimension) is told to the
// heuristic, and a bias that is not 16-byte aligned is copied to an aligned buffer before it goes
// to the epilogue (gemm_alignment.h). Shapes cuBLASLt has no algorithm for, and GEMMs with a
// dimension of 1, run through ATen on the same strided views.
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContextLight.h>
#include <ATen/ops/add.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cublasLt.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <initializer_list>
#include <utility>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <tuple>

#include "float_types.cuh"
#include "../gemm_alignment.h"
#include "../linear_checks.h"

namespace {

using at::Tensor;
using Slice = focusformer::LinearSlice;

// ---------------------------------------------------------------------------------------------
// cuBLASLt GEMM: D = op(A) · op(B) [+ bias per row of D] [+ C], column-major, alpha = 1.

struct Gemm {
  bool trans_a, trans_b;
  int64_t m, n, k;
  const void* a;
  int64_t lda;
  const void* b;
  int64_t ldb;
  const void* c;  // nullptr: no C term (beta = 0)
  void* d;
  int64_t ldd;  // also C's leading dimension
  const void* bias;  // [m] of D's dtype, or nullptr
  at::ScalarType ab_type, cd_type;
};

void check_lt(cublasStatus_t status, const char* what) {
  TORCH_CHECK(status == CUBLAS_STATUS_SUCCESS, "focusformer sliced_linear: ", what, " failed: ",
              cublasLtGetStatusName(status), " (", cublasLtGetStatusString(status), ")");
}

cudaDataType_t cuda_type(at::ScalarType t) {
  TORCH_CHECK(t == at::kFloat || t == at::kBFloat16 || t == at::kHalf,
              "focusformer sliced_linear: no cuBLASLt type for ", t);
  return t == at::kFloat ? CUDA_R_32F : (t == at::kBFloat16 ? CUDA_R_16BF : CUDA_R_16F);
}

struct DescDeleter {
  void operator()(cublasLtMatmulDescOpaque_t* p) const { cublasLtMatmulDescDestroy(p); }
  void operator()(cublasLtMatrixLayoutOpaque_t* p) const { cublasLtMatrixLayoutDestroy(p); }
  void operator()(cublasLtMatmulPreferenceOpaque_t* p) const { cublasLtMatmulPreferenceDestroy(p); }
};
using MatmulDesc = std::unique_ptr<cublasLtMatmulDescOpaque_t, DescDeleter>;
using Layout = std::unique_ptr<cublasLtMatrixLayoutOpaque_t, DescDeleter>;
using Preference = std::unique_ptr<cublasLtMatmulPreferenceOpaque_t, DescDeleter>;

Layout make_layout(at::ScalarType t, int64_t rows, int64_t cols, int64_t ld) {
  cublasLtMatrixLayout_t raw = nullptr;
  check_lt(cublasLtMatrixLayoutCreate(&raw, cuda_type(t), rows, cols, ld), "cublasLtMatrixLayoutCreate");
  return Layout(raw);
}

template <typename V>
void set_desc(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, const V& value) {
  check_lt(cublasLtMatmulDescSetAttribute(desc, attr, &value, sizeof(value)), "cublasLtMatmulDescSetAttribute");
}

template <typename V>
void set_pref(cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attr, const V& value) {
  check_lt(cublasLtMatmulPreferenceSetAttribute(pref, attr, &value, sizeof(value)),
           "cublasLtMatmulPreferenceSetAttribute");
}

// Heuristic choices, keyed by everything the heuristic sees: one query per distinct GEMM.
using AlgoKey = std::array<int64_t, 19>;
std::mutex algo_mutex;
std::map<AlgoKey, std::optional<cublasLtMatmulAlgo_t>> algo_cache;

// Runs the GEMM on cuBLASLt; false when cuBLASLt has no algorithm for it.
bool lt_matmul(const Gemm& g) {
  const bool tf32 = g.ab_type == at::kFloat && at::globalContext().allowTF32CuBLAS();
  const cublasComputeType_t compute = tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  cublasLtMatmulDesc_t raw_desc = nullptr;
  check_lt(cublasLtMatmulDescCreate(&raw_desc, compute, CUDA_R_32F), "cublasLtMatmulDescCreate");
  const MatmulDesc desc(raw_desc);
  const cublasOperation_t op_a = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_b = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  set_desc(raw_desc, CUBLASLT_MATMUL_DESC_TRANSA, op_a);
  set_desc(raw_desc, CUBLASLT_MATMUL_DESC_TRANSB, op_b);
  if (g.bias != nullptr) {
    TORCH_INTERNAL_ASSERT(focusformer::bias_in_epilogue(reinterpret_cast<uintptr_t>(g.bias)),
                          "sliced_linear: a bias reached the cuBLASLt epilogue unaligned");
    set_desc(raw_desc, CUBLASLT_MATMUL_DESC_EPILOGUE, CUBLASLT_EPILOGUE_BIAS);
    set_desc(raw_desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, g.bias);
  }
  const Layout a = g.trans_a ? make_layout(g.ab_type, g.k, g.m, g.lda) : make_layout(g.ab_type, g.m, g.k, g.lda);
  const Layout b = g.trans_b ? make_layout(g.ab_type, g.n, g.k, g.ldb) : make_layout(g.ab_type, g.k, g.n, g.ldb);
  const Layout d = make_layout(g.cd_type, g.m, g.n, g.ldd);
  const void* c = g.c != nullptr ? g.c : g.d;
  const size_t workspace_size = at::cuda::getCUDABlasLtWorkspaceSize();
  const cublasLtHandle_t handle = at::cuda::getCurrentCUDABlasLtHandle();

  const auto address = [](const void* p) { return static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p)); };
  const int64_t ab = c10::elementSize(g.ab_type), cd = c10::elementSize(g.cd_type);
  const AlgoKey key{c10::cuda::current_device(), g.trans_a, g.trans_b, g.m, g.n, g.k, g.lda, g.ldb, g.ldd,
                    static_cast<int64_t>(g.ab_type), static_cast<int64_t>(g.cd_type), g.bias != nullptr,
                    g.c != nullptr, compute,
                    focusformer::operand_alignment(address(g.a), g.lda, ab, g.trans_a ? g.m : g.k),
                    focusformer::operand_alignment(address(g.b), g.ldb, ab, g.trans_b ? g.k : g.n),
                    focusformer::operand_alignment(address(c), g.ldd, cd, g.n),
                    focusformer::operand_alignment(address(g.d), g.ldd, cd, g.n),
                    // the heuristic also reads the bias pointer
                    g.bias != nullptr ? focusformer::pow2_alignment(address(g.bias)) : int64_t{0}};
  std::optional<cublasLtMatmulAlgo_t> algo;
  {
    const std::lock_guard<std::mutex> lock(algo_mutex);
    auto found = algo_cache.find(key);
    if (found == algo_cache.end()) {
      cublasLtMatmulPreference_t raw_pref = nullptr;
      check_lt(cublasLtMatmulPreferenceCreate(&raw_pref), "cublasLtMatmulPreferenceCreate");
      const Preference pref(raw_pref);
      set_pref(raw_pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, static_cast<uint64_t>(workspace_size));
      set_pref(raw_pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, static_cast<uint32_t>(key[14]));
      set_pref(raw_pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, static_cast<uint32_t>(key[15]));
      set_pref(raw_pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, static_cast<uint32_t>(key[16]));
      set_pref(raw_pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, static_cast<uint32_t>(key[17]));
      cublasLtMatmulHeuristicResult_t result{};
      int returned = 0;
      const cublasStatus_t status =
          cublasLtMatmulAlgoGetHeuristic(handle, raw_desc, a.get(), b.get(), d.get(), d.get(), raw_pref, 1, &result,
                                         &returned);
      std::optional<cublasLtMatmulAlgo_t> choice;
      if (status == CUBLAS_STATUS_SUCCESS && returned > 0) choice = result.algo;
      found = algo_cache.emplace(key, choice).first;
    }
    algo = found->second;
  }
  if (!algo) return false;
  const float alpha = 1.f, beta = g.c != nullptr ? 1.f : 0.f;
  check_lt(cublasLtMatmul(handle, raw_desc, &alpha, g.a, a.get(), g.b, b.get(), &beta, c, d.get(), g.d, d.get(),
                          &*algo, at::cuda::getCUDABlasLtWorkspace(), workspace_size,
                          c10::cuda::getCurrentCUDAStream()),
           "cublasLtMatmul");
  return true;
}

// `sizes`/`strides` over memory at `p` on `device`, as an ATen view (no pointer-attribute query).
Tensor view_of(const void* p, at::ScalarType t, at::IntArrayRef sizes, at::IntArrayRef strides,
               const at::Device& device) {
  return at::for_blob(const_cast<void*>(p), sizes)
      .strides(strides)
      .target_device(device)
      .options(at::TensorOptions().dtype(t).device(device))
      .make_tensor();
}

// The column-major r x c matrix at `p` (leading dimension ld) as an ATen view of itself.
Tensor col_major_view(const void* p, at::ScalarType t, int64_t rows, int64_t cols, int64_t ld,
                      const at::Device& device) {
  return view_of(p, t, {rows, cols}, {1, ld}, device);
}

// The same GEMM through ATen on views of the same memory (no cuBLASLt algorithm, or a unit size).
void aten_matmul(const Gemm& g, const at::Device& device) {
  const Tensor a = g.trans_a ? col_major_view(g.a, g.ab_type, g.k, g.m, g.lda, device).t()
                             : col_major_view(g.a, g.ab_type, g.m, g.k, g.lda, device);
  const Tensor b = g.trans_b ? col_major_view(g.b, g.ab_type, g.n, g.k, g.ldb, device).t()
                             : col_major_view(g.b, g.ab_type, g.k, g.n, g.ldb, device);
  Tensor d = col_major_view(g.d, g.cd_type, g.m, g.n, g.ldd, device);
  // a float32 output accumulates in float32 all the way, as cuBLASLt's float32 C/D does
  Tensor product = g.cd_type == g.ab_type ? at::mm(a, b) : at::mm(a.to(g.cd_type), b.to(g.cd_type));
  if (g.bias != nullptr) product = at::add(product, view_of(g.bias, g.cd_type, {g.m, 1}, {1, 1}, device));
  if (g.c != nullptr) product = at::add(product, col_major_view(g.c, g.cd_type, g.m, g.n, g.ldd, device));
  d.copy_(product);
}

void matmul(const Gemm& g, const at::Device& device) {
  if (g.m == 0 || g.n == 0) return;
  const bool unit = g.m == 1 || g.n == 1 || g.k == 1;  // cuBLASLt epilogues are unreliable on vectors
  if (unit || !lt_matmul(g)) aten_matmul(g, device);
}

// ---------------------------------------------------------------------------------------------
// Exact GELU epilogue and its derivative, elementwise over contiguous [m, n] tensors.

constexpr int kThreads = 256;
constexpr float kSqrtHalf = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;

__device__ __forceinline__ float gelu(float v) { return 0.5f * v * (1.f + erff(v * kSqrtHalf)); }

__device__ __forceinline__ float gelu_grad(float v) {
  return 0.5f * (1.f + erff(v * kSqrtHalf)) + v * kInvSqrt2Pi * expf(-0.5f * v * v);
}

// V consecutive elements, loaded and stored as one aligned vector (V = 1: scalar).
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

// out = gelu(z) [+ residual] on packs of V elements; z in the compute type T, residual and out
// in R (T or float). count is a multiple of V and the pointers are Pack-aligned.
template <int V, typename T, typename R>
__global__ void gelu_epilogue_kernel(const T* __restrict__ z, const R* __restrict__ residual, R* __restrict__ out,
                                     int64_t count) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < count / V; p += stride) {
    const Pack<T, V> zp = reinterpret_cast<const Pack<T, V>*>(z)[p];
    Pack<R, V> rp{};
    if (residual != nullptr) rp = reinterpret_cast<const Pack<R, V>*>(residual)[p];
    Pack<R, V> o;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      float y = gelu(static_cast<float>(zp.v[j]));
      if (residual != nullptr) y += static_cast<float>(rp.v[j]);
      o.v[j] = static_cast<R>(y);
    }
    reinterpret_cast<Pack<R, V>*>(out)[p] = o;
  }
}

// dz = dy * gelu'(z) on packs of V elements; dy in the output type G, z and dz in T.
template <int V, typename T, typename G>
__global__ void gelu_backward_kernel(const G* __restrict__ dy, const T* __restrict__ z, T* __restrict__ dz,
                                     int64_t count) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < count / V; p += stride) {
    const Pack<T, V> zp = reinterpret_cast<const Pack<T, V>*>(z)[p];
    const Pack<G, V> gp = reinterpret_cast<const Pack<G, V>*>(dy)[p];
    Pack<T, V> o;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      o.v[j] = static_cast<T>(static_cast<float>(gp.v[j]) * gelu_grad(static_cast<float>(zp.v[j])));
    }
    reinterpret_cast<Pack<T, V>*>(dz)[p] = o;
  }
}

// 16-byte packs of T when every pointer allows it and they tile `count`, else 1.
template <typename T>
constexpr int kPack = 16 / sizeof(T);

template <typename T>
bool packable(int64_t count, std::initializer_list<std::pair<const void*, size_t>> pointers) {
  if (count % kPack<T> != 0) return false;
  for (const auto& [p, alignment] : pointers) {
    if (p != nullptr && reinterpret_cast<uintptr_t>(p) % alignment != 0) return false;
  }
  return true;
}

unsigned int elementwise_blocks(int64_t items) {
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>((items + kThreads - 1) / kThreads,
                                                                          int64_t{1} << 20)));
}

// Calls f(T{}, R{}) where R is T or float, as `other` says.
template <typename F>
void with_types(at::ScalarType t, at::ScalarType other, F&& f) {
  focusformer::with_float_type(t, "sliced_linear", [&](auto t_tag) {
    if (other == t) {
      f(t_tag, t_tag);
    } else {
      f(t_tag, float{});
    }
  });
}

void gelu_epilogue(const Tensor& z, const std::optional<Tensor>& residual, Tensor& out) {
  const int64_t count = z.numel();
  if (count == 0) return;
  with_types(z.scalar_type(), out.scalar_type(), [&](auto t_tag, auto r_tag) {
    using T = decltype(t_tag);
    using R = decltype(r_tag);
    constexpr int V = kPack<T>;
    const T* zp = z.const_data_ptr<T>();
    const R* rp = residual ? residual->const_data_ptr<R>() : nullptr;
    R* op = out.mutable_data_ptr<R>();
    const auto stream = c10::cuda::getCurrentCUDAStream();
    if (packable<T>(count, {{zp, sizeof(Pack<T, V>)}, {rp, sizeof(Pack<R, V>)}, {op, sizeof(Pack<R, V>)}})) {
      gelu_epilogue_kernel<V, T, R><<<elementwise_blocks(count / V), kThreads, 0, stream>>>(zp, rp, op, count);
    } else {
      gelu_epilogue_kernel<1, T, R><<<elementwise_blocks(count), kThreads, 0, stream>>>(zp, rp, op, count);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

Tensor gelu_backward(const Tensor& grad_out, const Tensor& z) {
  Tensor dz = at::empty(z.sizes(), z.options());
  const int64_t count = z.numel();
  if (count == 0) return dz;
  with_types(z.scalar_type(), grad_out.scalar_type(), [&](auto t_tag, auto g_tag) {
    using T = decltype(t_tag);
    using G = decltype(g_tag);
    constexpr int V = kPack<T>;
    const G* gp = grad_out.const_data_ptr<G>();
    const T* zp = z.const_data_ptr<T>();
    T* dp = dz.mutable_data_ptr<T>();
    const auto stream = c10::cuda::getCurrentCUDAStream();
    if (packable<T>(count, {{gp, sizeof(Pack<G, V>)}, {zp, sizeof(Pack<T, V>)}, {dp, sizeof(Pack<T, V>)}})) {
      gelu_backward_kernel<V, T, G><<<elementwise_blocks(count / V), kThreads, 0, stream>>>(gp, zp, dp, count);
    } else {
      gelu_backward_kernel<1, T, G><<<elementwise_blocks(count), kThreads, 0, stream>>>(gp, zp, dp, count);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return dz;
}

// ---------------------------------------------------------------------------------------------
// Argument checks.

// `w` is the tensor the GEMMs read (the weight or its cast); `weight` the parameter.
Slice check_args(const char* op, const Tensor& x, const Tensor& weight, const Tensor& w, int64_t out_features,
                 int64_t groups) {
  const Slice s = focusformer::check_linear_shapes(op, x, weight, out_features, groups);
  const auto t = x.scalar_type(), p = weight.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kBFloat16 || t == at::kHalf, op, ": x.dtype=", t,
              " must be float32, bfloat16 or float16 on CUDA");
  TORCH_CHECK(p == at::kFloat || p == at::kBFloat16 || p == at::kHalf, op, ": weight.dtype=", p,
              " must be float32, bfloat16 or float16 on CUDA");
  TORCH_CHECK(w.scalar_type() == t, op, ": ", &w == &weight ? "weight" : "weight_cast", ".dtype=", w.scalar_type(),
              " must equal x.dtype=", t);
  TORCH_CHECK(x.is_cuda() && weight.device() == x.device(), op, ": x (on ", x.device(), ") and weight (on ",
              weight.device(), ") must be on one CUDA device");
  return s;
}

// An [m, n] tensor on x's device whose dtype is x.dtype or, when `allow_float` and x is
// reduced-precision, float32.
void check_activation(const char* op, const char* name, const Tensor& t, const Slice& s, const Tensor& x,
                      bool allow_float) {
  focusformer::check_activation_shape(op, name, t, s);
  const bool dtype_ok = t.scalar_type() == x.scalar_type() || (allow_float && t.scalar_type() == at::kFloat);
  TORCH_CHECK(dtype_ok, op, ": ", name, ".dtype=", t.scalar_type(), " must be x.dtype=", x.scalar_type(),
              allow_float ? " or float32" : "");
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but x is on ", x.device());
}

// A GEMM operand's pointer with rows of unit stride (the super-weight as it is, else a copy).
Tensor unit_column_stride(const Tensor& t) {
  return t.stride(1) == 1 ? t : t.contiguous();
}

// ---------------------------------------------------------------------------------------------
// Ops.

// The bias of group g for the epilogue: its slice of the super-bias `b`, or an aligned copy of
// it when the slice does not start on a 16-byte boundary (kept alive in `holder` until the
// GEMM is enqueued; the stream orders any reuse of its memory after the GEMM).
const void* epilogue_bias(const Tensor& b, const Slice& s, int64_t g, Tensor& holder) {
  const char* p = static_cast<const char*>(b.const_data_ptr()) + g * s.o_max * b.element_size();
  if (focusformer::bias_in_epilogue(reinterpret_cast<uintptr_t>(p))) return p;
  holder = b.narrow(0, g * s.o_max, s.o).clone();
  return holder.const_data_ptr();
}

std::tuple<Tensor, Tensor> sliced_linear_cuda(const Tensor& x_, const Tensor& weight_param,
                                              const std::optional<Tensor>& bias_param, int64_t out_features,
                                              int64_t groups, bool apply_gelu,
                                              const std::optional<Tensor>& residual_,
                                              const std::optional<Tensor>& weight_cast,
                                              const std::optional<Tensor>& bias_cast) {
  constexpr const char* op = "sliced_linear";
  const Tensor& w = focusformer::operand(op, "weight", weight_param, weight_cast, x_);
  const Slice s = focusformer::merge_full_groups(check_args(op, x_, weight_param, w, out_features, groups));
  const c10::cuda::CUDAGuard guard(x_.device());
  std::optional<Tensor> residual;
  if (residual_) {
    check_activation(op, "residual", *residual_, s, x_, true);
    residual = residual_->contiguous();
  }
  const at::ScalarType t = x_.scalar_type();
  const at::ScalarType out_type = residual ? residual->scalar_type() : t;
  const at::ScalarType z_type = apply_gelu ? t : out_type;  // the GEMM's output: preact, or the result
  Tensor b;
  if (bias_param) {
    focusformer::check_bias_shape(op, *bias_param, weight_param);
    const Tensor& bias = focusformer::operand(op, "bias", *bias_param, bias_cast, x_);
    TORCH_CHECK(bias.scalar_type() == z_type && bias.device() == x_.device(), op, ": ",
                bias_cast ? "bias_cast" : "bias", " (", bias.scalar_type(), " on ", bias.device(),
                ") must be of dtype ", z_type, " (the GEMM output's) on ", x_.device());
    b = bias.contiguous();
  }
  const Tensor x = x_.contiguous();
  const Tensor weight = unit_column_stride(w);
  Tensor out = at::empty({s.m, s.n()}, x.options().dtype(out_type));
  Tensor preact = apply_gelu ? at::empty({s.m, s.n()}, x.options()) : at::empty({0}, x.options());
  Tensor& z = apply_gelu ? preact : out;
  const bool residual_in_gemm = residual && !apply_gelu;
  const int64_t elem_w = weight.element_size(), elem_z = z.element_size();
  for (int64_t g = 0; g < s.groups; ++g) {
    Tensor aligned_bias;
    Gemm gemm{};
    gemm.trans_a = true;
    gemm.trans_b = false;
    gemm.m = s.o;
    gemm.n = s.m;
    gemm.k = s.k;
    gemm.a = static_cast<const char*>(weight.const_data_ptr()) + g * s.o_max * weight.stride(0) * elem_w;
    gemm.lda = weight.stride(0);
    gemm.b = x.const_data_ptr();
    gemm.ldb = s.k;
    gemm.c = residual_in_gemm ? static_cast<const char*>(residual->const_data_ptr()) + g * s.o * elem_z : nullptr;
    gemm.d = static_cast<char*>(z.mutable_data_ptr()) + g * s.o * elem_z;
    gemm.ldd = s.n();
    gemm.bias = b.defined() ? epilogue_bias(b, s, g, aligned_bias) : nullptr;
    gemm.ab_type = t;
    gemm.cd_type = z_type;
    matmul(gemm, x.device());
  }
  if (apply_gelu) gelu_epilogue(preact, residual, out);
  return {out, preact};
}

// Gradients of sliced_linear_cuda: grad_x in x's dtype, grad_w and grad_b full-size in the
// weight parameter's dtype (the dW GEMM writes it directly: bf16 operands, fp32 output).
std::tuple<Tensor, Tensor, Tensor> sliced_linear_backward_cuda(const Tensor& grad_out, const Tensor& x_,
                                                               const Tensor& weight_param,
                                                               const std::optional<Tensor>& weight_cast,
                                                               const Tensor& preact, int64_t out_features,
                                                               int64_t groups, bool apply_gelu) {
  constexpr const char* op = "sliced_linear_backward";
  const Tensor& w = focusformer::operand(op, "weight", weight_param, weight_cast, x_);
  const Slice s = focusformer::merge_full_groups(check_args(op, x_, weight_param, w, out_features, groups));
  check_activation(op, "grad_out", grad_out, s, x_, true);
  if (apply_gelu) check_activation(op, "preact", preact, s, x_, false);
  const c10::cuda::CUDAGuard guard(x_.device());
  const at::ScalarType t = x_.scalar_type();
  const Tensor x = x_.contiguous();
  const Tensor weight = unit_column_stride(w);
  // grad of the GEMM output; the bias gradient is summed from it
  const Tensor grad_z_out = apply_gelu ? gelu_backward(grad_out.contiguous(), preact.contiguous()) : grad_out.contiguous();
  const Tensor grad_z = grad_z_out.scalar_type() == t ? grad_z_out : grad_z_out.to(t);
  Tensor grad_x = at::empty({s.m, s.k}, x.options());
  Tensor grad_w = at::zeros(weight_param.sizes(), weight_param.options());
  Tensor grad_b = at::zeros({weight_param.size(0)}, weight_param.options());
  const int64_t elem = x.element_size();
  for (int64_t g = 0; g < s.groups; ++g) {
    const char* grad_z_g = static_cast<const char*>(grad_z.const_data_ptr()) + g * s.o * elem;
    Gemm dx{};
    dx.trans_a = false;
    dx.trans_b = false;
    dx.m = s.k;
    dx.n = s.m;
    dx.k = s.o;
    dx.a = static_cast<const char*>(weight.const_data_ptr()) + g * s.o_max * weight.stride(0) * elem;
    dx.lda = weight.stride(0);
    dx.b = grad_z_g;
    dx.ldb = s.n();
    dx.c = g > 0 ? grad_x.const_data_ptr() : nullptr;
    dx.d = grad_x.mutable_data_ptr();
    dx.ldd = s.k;
    dx.ab_type = dx.cd_type = t;
    matmul(dx, x.device());

    Gemm dw{};
    dw.trans_a = false;
    dw.trans_b = true;
    dw.m = s.k;
    dw.n = s.o;
    dw.k = s.m;
    dw.a = x.const_data_ptr();
    dw.lda = s.k;
    dw.b = grad_z_g;
    dw.ldb = s.n();
    dw.d = static_cast<char*>(grad_w.mutable_data_ptr()) + g * s.o_max * grad_w.stride(0) * grad_w.element_size();
    dw.ldd = grad_w.stride(0);
    dw.ab_type = t;
    dw.cd_type = grad_w.scalar_type();
    if (s.m > 0) matmul(dw, x.device());

    Tensor grad_b_g = grad_b.narrow(0, g * s.o_max, s.o);
    at::sum_out(grad_b_g, grad_z_out.narrow(1, g * s.o, s.o), at::IntArrayRef{0}, false, grad_b.scalar_type());
  }
  return {grad_x, grad_w, grad_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(focusformer, CUDA, m) {
  m.impl("sliced_linear", &sliced_linear_cuda);
  m.impl("sliced_linear_backward", &sliced_linear_backward_cuda);
}
