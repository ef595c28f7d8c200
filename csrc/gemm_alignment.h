// Alignments of the cuBLASLt GEMMs, as pure functions of addresses and leading dimensions: what
// the CUDA linear tells the heuristic, and whether a bias may go to the epilogue. Shared by
// csrc/cuda/sliced_linear.cu and, so the CPU tests can check the decisions, by module.cpp.
#pragma once

#include <cstdint>

namespace focusformer {

// Largest power of two <= 256 dividing `value` (256 for 0).
constexpr int64_t pow2_alignment(uint64_t value) {
  int64_t a = 256;
  while (a > 1 && value % static_cast<uint64_t>(a) != 0) a /= 2;
  return a;
}

// The byte alignment every column of a column-major matrix has: it starts at `address` and its
// `cols` columns lie `ld` elements of `elem` bytes apart. This, not the address alone, is what
// cuBLASLt may assume for the operand (a row stride of 45 bf16 elements aligns later rows to 2 bytes).
constexpr int64_t operand_alignment(uint64_t address, int64_t ld, int64_t elem, int64_t cols) {
  const int64_t first = pow2_alignment(address);
  if (cols <= 1) return first;
  const int64_t step = pow2_alignment(static_cast<uint64_t>(ld * elem));
  return first < step ? first : step;
}

// cuBLASLt's preferences state the alignments of A, B, C and D but not of the epilogue's bias
// pointer, and a kernel the heuristic picks may load the bias in 16-byte vectors: a bias that is
// not 16-byte aligned (the slice of group g of a super-bias, g*O_max elements in) would fault
// with "misaligned address". Such a bias is copied to an aligned buffer first.
constexpr int64_t kBiasAlignment = 16;

constexpr bool bias_in_epilogue(uint64_t bias_address) {
  return bias_address % static_cast<uint64_t>(kBiasAlignment) == 0;
}

}  // namespace focusformer
