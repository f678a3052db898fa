#include "fastpath.h"

#include <cstdint>
#include <cstring>

namespace coded {
namespace {

// All exponent bits set: an infinity or a NaN, for IEEE half, bfloat16, single and double.
template <typename Bits>
bool all_finite(const void* row, size_t elements, Bits exponent_mask) {
  const unsigned char* bytes = static_cast<const unsigned char*>(row);
  for (size_t i = 0; i < elements; ++i) {
    Bits bits;
    std::memcpy(&bits, bytes + i * sizeof(Bits), sizeof(Bits));
    if ((bits & exponent_mask) == exponent_mask) return false;
  }
  return true;
}

}  // namespace

bool row_finite(const void* row, size_t elements, const std::string& dtype) {
  if (dtype == "FP32") return all_finite<uint32_t>(row, elements, 0x7f800000u);
  if (dtype == "FP64") return all_finite<uint64_t>(row, elements, 0x7ff0000000000000ull);
  if (dtype == "FP16") return all_finite<uint16_t>(row, elements, 0x7c00u);
  if (dtype == "BF16") return all_finite<uint16_t>(row, elements, 0x7f80u);
  return true;
}

void sum_rows(const std::vector<const float*>& rows, size_t elements, float* out) {
  std::memcpy(out, rows[0], elements * sizeof(float));
  for (size_t r = 1; r < rows.size(); ++r)
    for (size_t i = 0; i < elements; ++i) out[i] += rows[r][i];
}

void subtract_missing(const std::vector<const float*>& others, const float* parity, float weight, size_t elements,
                      float* out) {
  for (size_t i = 0; i < elements; ++i) {
    float value = weight * parity[i];
    for (const float* row : others) value -= row[i];
    out[i] = value;
  }
}

}  // namespace coded
