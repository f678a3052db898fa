#include "config.h"

#include <algorithm>
#include <map>
#include <stdexcept>

#include "json.h"

namespace coded {
namespace {

[[noreturn]] void bad(const std::string& what, const std::string& why) {
  throw std::invalid_argument("parameter '" + what + "': " + why);
}

TensorDesc tensor(const Json& json, const std::string& where, const char* dtype_key) {
  const Json* name = json.find("name");
  const Json* dtype = json.find(dtype_key);
  const Json* dims = json.find("dims");
  if (!name || !dtype || !dims || dims->kind != Json::Kind::Array) bad(where, "needs name, dtype and dims");
  TensorDesc desc{name->text, dtype->text, {}};
  if (desc.dtype.rfind("TYPE_", 0) == 0) desc.dtype = desc.dtype.substr(5);
  if (dtype_size(desc.dtype) == 0) bad(where, "unsupported dtype '" + desc.dtype + "'");
  for (const Json& d : dims->items) {
    long long value = d.as_int();
    if (value <= 0) bad(where, "dims must be fixed and positive");
    desc.dims.push_back(value);
  }
  return desc;
}

class Parameters {
 public:
  explicit Parameters(const Json* json) {
    if (!json) return;
    for (const auto& [key, value] : json->fields) {
      const Json* text = value.find("string_value");
      values_[key] = text ? text->text : "";
    }
  }

  std::string text(const std::string& key, const char* fallback = nullptr) const {
    auto it = values_.find(key);
    if (it != values_.end()) return it->second;
    if (!fallback) bad(key, "missing");
    return fallback;
  }

  double number(const std::string& key, const char* fallback, double min) const {
    std::string value = text(key, fallback);
    size_t used = 0;
    double parsed = 0;
    try {
      parsed = std::stod(value, &used);
    } catch (const std::exception&) {
      bad(key, "not a number: '" + value + "'");
    }
    if (used != value.size()) bad(key, "not a number: '" + value + "'");
    if (!(parsed >= min)) bad(key, "must be at least " + std::to_string(min) + ", got " + value);
    return parsed;
  }

  int integer(const std::string& key, const char* fallback, int min) const {
    double value = number(key, fallback, min);
    if (value != static_cast<int>(value)) bad(key, "must be an integer");
    return static_cast<int>(value);
  }

  std::string choice(const std::string& key, const char* fallback, const std::vector<std::string>& options) const {
    std::string value = text(key, fallback);
    for (const auto& option : options)
      if (value == option) return value;
    std::string known;
    for (const auto& option : options) known += (known.empty() ? "" : ", ") + option;
    bad(key, "'" + value + "' is not one of " + known);
  }

 private:
  std::map<std::string, std::string> values_;
};

std::vector<std::string> split(const std::string& text) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    size_t comma = text.find(',', start);
    parts.push_back(text.substr(start, comma - start));
    if (comma == std::string::npos) return parts;
    start = comma + 1;
  }
}

}  // namespace

size_t dtype_size(const std::string& dtype) {
  static const std::map<std::string, size_t> sizes = {
      {"BOOL", 1}, {"UINT8", 1}, {"INT8", 1}, {"UINT16", 2}, {"INT16", 2}, {"FP16", 2}, {"BF16", 2},
      {"UINT32", 4}, {"INT32", 4}, {"FP32", 4}, {"UINT64", 8}, {"INT64", 8}, {"FP64", 8}};
  auto it = sizes.find(dtype);
  return it == sizes.end() ? 0 : it->second;
}

size_t TensorDesc::element_size() const { return dtype_size(dtype); }

size_t TensorDesc::elements() const {
  size_t count = 1;
  for (int64_t d : dims) count *= static_cast<size_t>(d);
  return count;
}

bool TensorDesc::is_float() const { return dtype == "FP16" || dtype == "BF16" || dtype == "FP32" || dtype == "FP64"; }

EnsembleConfig EnsembleConfig::from_model_config(const std::string& text) {
  Json json = Json::parse(text);
  EnsembleConfig c;
  if (const Json* name = json.find("name")) c.name = name->text;
  const Json* max_batch = json.find("max_batch_size");
  c.max_batch_size = max_batch ? static_cast<int>(max_batch->as_int()) : 0;
  if (c.max_batch_size <= 0) bad("max_batch_size", "must be positive: queries are batched into coding groups");

  const Json* inputs = json.find("input");
  if (!inputs || inputs->items.size() != 1) bad("input", "exactly one input (the query) is needed");
  c.input = tensor(inputs->items[0], "input", "data_type");
  const Json* outputs = json.find("output");
  if (!outputs) bad("output", "missing");
  bool has_flag = false;
  int answers = 0;
  for (const Json& item : outputs->items) {
    TensorDesc out = tensor(item, "output", "data_type");
    if (out.name == RECONSTRUCTED) {
      if (out.dtype != "BOOL" || out.dims != std::vector<int64_t>{1}) bad("output", "'reconstructed' must be TYPE_BOOL [1]");
      has_flag = true;
    } else {
      c.output = out;
      ++answers;
    }
  }
  if (!has_flag || answers != 1) bad("output", "needs the answer tensor and 'reconstructed'");

  Parameters p(json.find("parameters"));
  c.members = split(p.text("members"));
  for (const auto& member : c.members)
    if (member.empty()) bad("members", "empty model name in '" + p.text("members") + "'");
  c.k = p.integer("k", nullptr, 1);
  if (c.k > c.num_workers()) bad("k", "larger than the number of members");
  c.systematic = p.choice("systematic", nullptr, {"true", "false"}) == "true";
  if (c.num_coded() < 1) bad("members", "a systematic code needs at least one coded worker beyond the k data workers");
  c.min_available = p.integer("min_available", nullptr, 1);
  if (c.min_available > c.num_workers()) bad("min_available", "larger than the number of members");
  try {
    c.member_output = tensor(Json::parse(p.text("member_output")), "member_output", "dtype");
  } catch (const std::invalid_argument& error) {
    std::string why = error.what();
    if (why.rfind("parameter ", 0) == 0) throw;
    bad("member_output", why);
  }

  std::string encoder = p.choice("encoder", nullptr, {"sum", "stack", "model"});
  c.encoder = encoder == "sum" ? Encoder::Sum : encoder == "stack" ? Encoder::Stack : Encoder::Model;
  if (c.encoder != Encoder::Model && !(c.systematic && c.num_coded() == 1))
    bad("encoder", "'" + encoder + "' needs a systematic code with one coded worker");
  if (c.encoder == Encoder::Sum && c.input.dtype != "FP32") bad("encoder", "'sum' needs an FP32 input");
  if (c.encoder == Encoder::Model) {
    c.encoder_model = p.text("encoder_model");
    if (c.encoder_model.empty()) bad("encoder_model", "empty");
  }

  std::string decoder = p.choice("decoder", nullptr, {"subtract", "model"});
  c.decoder = decoder == "subtract" ? Decoder::Subtract : Decoder::Model;
  if (c.decoder == Decoder::Subtract) {
    if (!(c.systematic && c.num_coded() == 1 && c.min_available == c.k))
      bad("decoder", "'subtract' needs a systematic code with one coded worker and min_available = k");
    if (c.member_output.dtype != "FP32") bad("decoder", "'subtract' needs FP32 member outputs");
    c.parity_weight = static_cast<float>(p.number("parity_weight", "1", -1e30));
  } else {
    c.decoder_model = p.text("decoder_model");
    if (c.decoder_model.empty()) bad("decoder_model", "empty");
  }
  c.postprocess_by_decoder = p.choice("postprocess", "none", {"none", "decoder"}) == "decoder";
  if (c.postprocess_by_decoder && c.decoder != Decoder::Model) bad("postprocess", "'decoder' needs decoder 'model'");
  if (!c.postprocess_by_decoder && (c.member_output.dtype != c.output.dtype || c.member_output.dims != c.output.dims))
    bad("member_output", "differs from output '" + c.output.name + "', which needs postprocess 'decoder'");

  std::string workers = p.text("worker_models", "");
  if (!workers.empty()) {
    for (const auto& pair : split(workers)) {
      size_t colon = pair.find(':');
      if (colon == std::string::npos || colon == 0 || colon + 1 == pair.size())
        bad("worker_models", "expected deployed_model:parity_model per worker, got '" + pair + "'");
      c.worker_models.emplace_back(pair.substr(0, colon), pair.substr(colon + 1));
    }
    if (static_cast<int>(c.worker_models.size()) != c.num_workers()) bad("worker_models", "one entry per member needed");
    if (!(c.systematic && c.num_coded() == 1))
      bad("worker_models", "redundancy on every worker needs a systematic code with one coded worker");
  }
  c.deadline_s = p.number("deadline_ms", "20", 0) / 1000;
  // without a lower bound the deadline stays fixed at deadline_ms
  c.deadline_min_s = std::min(c.deadline_s, p.number("deadline_min_ms", "1e300", 0) / 1000);
  c.deadline_percentile = p.number("deadline_percentile", "95", 0);
  if (c.deadline_percentile > 100) bad("deadline_percentile", "must be at most 100");
  c.deadline_margin = p.number("deadline_margin", "1.5", 0);
  c.deadline_window = p.integer("deadline_window", "200", 1);
  c.group_close_s = p.number("group_close_us", "2000", 0) / 1e6;
  c.copy_when_idle = p.choice("copy_when_idle", "false", {"true", "false"}) == "true";
  c.calls_per_worker = p.integer("calls_per_worker", "1", 1);
  c.pin_roles = p.choice("pin_roles", "false", {"true", "false"}) == "true";
  if (c.pin_roles && c.every_worker()) bad("pin_roles", "applies to the dedicated placement only");
  c.timeout_s = p.number("timeout_ms", "5000", 0) / 1000;
  if (c.timeout_s <= 0) bad("timeout_ms", "must be positive");
  c.suspend_after_misses = p.integer("suspend_after_misses", "3", 0);
  c.probe_interval_s = p.number("probe_interval_ms", "1000", 0) / 1000;
  c.max_in_flight = p.integer("max_in_flight", "4096", 1);
  return c;
}

}  // namespace coded
