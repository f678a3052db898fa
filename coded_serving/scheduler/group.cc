#include "group.h"

#include <cstring>

#include "fastpath.h"

namespace coded {

SharedResponse share(ResponsePtr response) { return SharedResponse(response.release(), ResponseDeleter()); }

Group::Group(uint64_t group_id, const EnsembleConfig& c, Race r)
    : id(group_id),
      config(c),
      race(std::move(r)),
      results(c.num_workers()),
      rows(c.num_workers(), nullptr),
      worker_of(c.num_workers(), -1),
      call_of(c.num_workers()),
      held_back(c.num_workers(), false) {}

const char* Group::query_row(int query) const {
  return queries[query].client->input.data() + queries[query].row * config.input.row_bytes();
}

void Group::append_input(int role, InputSpec& input) const {
  const size_t row_bytes = config.input.row_bytes();
  if (config.systematic && role < config.k) {
    input.chunks.emplace_back(slot_row(role), row_bytes);
  } else if (config.encoder == Encoder::Sum) {
    input.chunks.emplace_back(summed.data(), summed.size() * sizeof(float));
  } else if (config.encoder == Encoder::Stack) {
    for (int slot = 0; slot < config.k; ++slot) input.chunks.emplace_back(slot_row(slot), row_bytes);
  } else {
    const int coded = role - (config.systematic ? config.k : 0);
    const size_t coded_bytes = encoded_view.bytes / config.num_coded();
    input.chunks.emplace_back(encoded_view.base + coded * coded_bytes, coded_bytes);
  }
}

void Group::encode_by_sum() {
  std::vector<const float*> slots;
  for (int slot = 0; slot < config.k; ++slot) slots.push_back(reinterpret_cast<const float*>(slot_row(slot)));
  summed.resize(config.input.elements());
  sum_rows(slots, summed.size(), summed.data());
}

std::vector<float> Group::decode_by_subtraction(int& missing) const {
  const std::vector<bool>& mask = race.decode_mask();
  missing = 0;
  while (mask[missing]) ++missing;
  std::vector<const float*> others;
  for (int slot = 0; slot < config.k; ++slot)
    if (slot != missing) others.push_back(reinterpret_cast<const float*>(rows[slot]));
  std::vector<float> estimate(config.member_output.elements());
  subtract_missing(others, reinterpret_cast<const float*>(rows[config.k]), config.parity_weight, estimate.size(),
                   estimate.data());
  return estimate;
}

std::vector<std::vector<char>> Group::decoder_buffers() const {
  const int workers = config.num_workers();
  const size_t row_bytes = config.member_output.row_bytes();
  std::vector<char> results_buffer(workers * row_bytes, 0), available(workers, 0);
  const std::vector<bool>& mask = race.decode_mask();
  for (int role = 0; role < workers; ++role) {
    if (!mask[role]) continue;
    available[role] = 1;
    std::memcpy(results_buffer.data() + role * row_bytes, rows[role], row_bytes);
  }
  std::vector<std::vector<char>> buffers;
  buffers.push_back(std::move(results_buffer));
  buffers.push_back(std::move(available));
  return buffers;
}

}  // namespace coded
