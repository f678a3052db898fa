#include "metrics.h"

#include "triton_util.h"

namespace coded {
namespace {

struct ParameterDeleter {
  void operator()(TRITONSERVER_Parameter* p) const { TRITONSERVER_ParameterDelete(p); }
};
using ParameterPtr = std::unique_ptr<TRITONSERVER_Parameter, ParameterDeleter>;

}  // namespace

void FamilyDeleter::operator()(TRITONSERVER_MetricFamily* f) const {
  TRITONSERVER_ErrorDelete(TRITONSERVER_MetricFamilyDelete(f));
}

void MetricDeleter::operator()(TRITONSERVER_Metric* m) const { TRITONSERVER_ErrorDelete(TRITONSERVER_MetricDelete(m)); }

Counter::Counter(TRITONSERVER_MetricFamily* family, const std::string& model, const std::string& member) {
  std::vector<ParameterPtr> owned;
  owned.emplace_back(TRITONSERVER_ParameterNew("model", TRITONSERVER_PARAMETER_STRING, model.c_str()));
  if (!member.empty())
    owned.emplace_back(TRITONSERVER_ParameterNew("member", TRITONSERVER_PARAMETER_STRING, member.c_str()));
  std::vector<const TRITONSERVER_Parameter*> labels;
  for (const auto& label : owned) labels.push_back(label.get());
  TRITONSERVER_Metric* metric = nullptr;
  check(TRITONSERVER_MetricNew(&metric, family, labels.data(), labels.size()));
  metric_.reset(metric);
}

void Counter::add(double value) const {
  if (value > 0) TRITONSERVER_ErrorDelete(TRITONSERVER_MetricIncrement(metric_.get(), value));
}

static FamilyPtr counter_family(const char* name, const char* description) {
  TRITONSERVER_MetricFamily* family = nullptr;
  check(TRITONSERVER_MetricFamilyNew(&family, TRITONSERVER_METRIC_KIND_COUNTER, name, description));
  return FamilyPtr(family);
}

MetricFamilies::MetricFamilies()
    : queries(counter_family("coded_queries_total", "queries answered by a coded ensemble")),
      reconstructed(counter_family("coded_reconstructed_total", "queries answered by a reconstruction")),
      errors(counter_family("coded_query_errors_total", "queries answered with an error")),
      groups(counter_family("coded_groups_total", "coding groups formed")),
      padded(counter_family("coded_padded_slots_total", "slots of partial groups filled with copies")),
      decode_us(counter_family("coded_decode_duration_us_total", "time spent decoding")),
      member_rows(counter_family("coded_member_rows_total", "rows answered by member calls, redundancy included")),
      member_errors(counter_family("coded_member_errors_total", "member calls that failed")),
      member_late(counter_family("coded_member_late_total", "member calls past the deadline")) {}

EnsembleMetrics::EnsembleMetrics(const MetricFamilies& families, const std::string& model,
                                 const std::vector<std::string>& members)
    : queries_(families.queries.get(), model),
      reconstructed_(families.reconstructed.get(), model),
      errors_(families.errors.get(), model),
      groups_(families.groups.get(), model),
      padded_(families.padded.get(), model),
      decode_us_(families.decode_us.get(), model),
      member_rows_(families.member_rows.get(), model) {
  for (const auto& member : members) {
    member_errors_.emplace_back(families.member_errors.get(), model, member);
    member_late_.emplace_back(families.member_late.get(), model, member);
  }
}

void EnsembleMetrics::record(const GroupCounts& counts) const {
  queries_.add(counts.queries);
  reconstructed_.add(counts.reconstructed);
  errors_.add(counts.errors);
  groups_.add(counts.groups);
  padded_.add(counts.padded_slots);
  decode_us_.add(counts.decode_us);
  for (int w : counts.failed_workers) member_errors_[w].add(1);
  for (int w : counts.late_workers) member_late_[w].add(1);
}

}  // namespace coded
