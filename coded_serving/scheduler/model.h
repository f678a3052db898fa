// What every instance of one coded ensemble shares.
#pragma once

#include <atomic>

#include "calls.h"
#include "config.h"
#include "core.h"
#include "metrics.h"
#include "scheduler.h"
#include "timer.h"
#include "triton_util.h"

namespace coded {

struct ModelState {
  ModelState(EnsembleConfig c, TRITONSERVER_Server* s, const MetricFamilies& families)
      : config(std::move(c)),
        server(s),
        input_type(TRITONSERVER_StringToDataType(config.input.dtype.c_str())),
        output_type(TRITONSERVER_StringToDataType(config.output.dtype.c_str())),
        member_output_type(TRITONSERVER_StringToDataType(config.member_output.dtype.c_str())),
        allocator(cpu_allocator()),
        metrics(families, config.name, config.members),
        scheduler(*this) {}

  CodeShape code() const {
    return {config.k, config.num_workers(), config.systematic, config.min_available, config.postprocess_by_decoder};
  }

  const EnsembleConfig config;
  TRITONSERVER_Server* const server;
  const TRITONSERVER_DataType input_type, output_type, member_output_type;
  AllocatorPtr allocator;
  EnsembleMetrics metrics;
  std::atomic<int> in_flight{0};  // queries received and not yet answered
  Scheduler scheduler;
  Timer timer;  // last: stopped first, before what its callbacks use
};

}  // namespace coded
