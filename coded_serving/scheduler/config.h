// The coded ensemble's configuration, read and checked once at model load (no Triton types).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace coded {

struct TensorDesc {
  std::string name;
  std::string dtype;  // Triton's name without "TYPE_", e.g. "FP32"
  std::vector<int64_t> dims;  // without the batch dimension

  size_t element_size() const;
  size_t elements() const;
  size_t row_bytes() const { return elements() * element_size(); }
  bool is_float() const;
};

enum class Encoder { Sum, Stack, Model };
enum class Decoder { Subtract, Model };

struct EnsembleConfig {
  std::string name;
  int max_batch_size = 0;
  TensorDesc input, output, member_output;
  std::vector<std::string> members;  // worker order
  // Redundancy on every worker: worker w runs originals on worker_models[w].first and coded
  // queries on .second. Empty: the dedicated placement, worker w runs members[w] only.
  std::vector<std::pair<std::string, std::string>> worker_models;
  int k = 0;
  bool systematic = true;
  int min_available = 0;
  Encoder encoder = Encoder::Sum;
  std::string encoder_model;
  Decoder decoder = Decoder::Subtract;
  std::string decoder_model;
  float parity_weight = 1.0f;
  bool postprocess_by_decoder = false;
  // The deadline adapts: deadline_percentile of the members' last deadline_window call
  // latencies, times deadline_margin, within [deadline_min_s, deadline_s].
  double deadline_s = 0.02;
  double deadline_min_s = 0.02;
  double deadline_percentile = 95;
  double deadline_margin = 1.5;
  int deadline_window = 200;
  double group_close_s = 0.002;  // how long a group waits for its k queries, from its first call
  bool copy_when_idle = false;   // a lone query's copy goes out at close if a worker idles
  int calls_per_worker = 1;      // member calls in flight per worker (late binding)
  bool pin_roles = false;        // data role i only on member i: which queries a lost member costs is known
  double timeout_s = 5.0;
  int suspend_after_misses = 3;
  double probe_interval_s = 1.0;
  int max_in_flight = 4096;

  int num_workers() const { return static_cast<int>(members.size()); }
  int num_coded() const { return num_workers() - (systematic ? k : 0); }
  bool every_worker() const { return !worker_models.empty(); }
  // the model a worker runs for a role's kind (0: originals, else coded query kind - 1)
  const std::string& model_of(int worker, int kind) const {
    return every_worker() ? (kind == 0 ? worker_models[worker].first : worker_models[worker].second) : members[worker];
  }

  // Throws std::invalid_argument naming the bad parameter or tensor.
  static EnsembleConfig from_model_config(const std::string& json);
};

size_t dtype_size(const std::string& dtype);  // 0 for unknown or variable-size types
const char* const RECONSTRUCTED = "reconstructed";

}  // namespace coded
