// Dispatch from a floating dtype to its C++ type, shared by the CUDA kernels' launchers.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace focusformer {

// Calls f(T{}) with the C++ type T of `t` (float32, bfloat16 or float16); `op` names the caller
// in the error for any other dtype.
template <typename F>
void with_float_type(at::ScalarType t, const char* op, F&& f) {
  switch (t) {
    case at::kFloat:
      f(float{});
      break;
    case at::kBFloat16:
      f(at::BFloat16{});
      break;
    case at::kHalf:
      f(at::Half{});
      break;
    default:
      TORCH_CHECK(false, "focusformer ", op, ": the CUDA kernels take no ", t);
  }
}

}  // namespace focusformer
