// The in-process fast paths of the codes (ParM's sum encoder and subtraction decoder) and the
// finiteness check of a tensor row. Everything else stays in the Python encoder/decoder models.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace coded {

// False if a float row holds NaN or an infinity; other dtypes are always finite.
bool row_finite(const void* row, size_t elements, const std::string& dtype);

// out = sum of the k rows, element-wise.
void sum_rows(const std::vector<const float*>& rows, size_t elements, float* out);

// The one missing data row: weight * parity - sum of the other data rows.
void subtract_missing(const std::vector<const float*>& others, const float* parity, float weight, size_t elements,
                      float* out);

}  // namespace coded
