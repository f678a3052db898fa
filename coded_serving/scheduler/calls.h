// In-process requests to other models of the server (members, the encoder, the decoder):
// inputs point at buffers the caller keeps alive until Triton releases the request.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "triton_util.h"

namespace coded {

struct InputSpec {
  std::string name;
  TRITONSERVER_DataType dtype;
  std::vector<int64_t> shape;
  std::vector<std::pair<const void*, size_t>> chunks;  // appended in order, never copied
};

// A request for `model` asking for `output`. Throws TritonFailure.
RequestPtr new_request(TRITONSERVER_Server* server, const std::string& model, const std::vector<InputSpec>& inputs,
                       const std::string& output);

struct TensorView {
  TRITONSERVER_DataType dtype;
  std::vector<int64_t> shape;
  const char* base;
  size_t bytes;
};

// The named output of a response; throws TritonFailure with the response's error, or when
// the output is missing or not in CPU memory.
TensorView output_of(TRITONSERVER_InferenceResponse* response, const std::string& name);

// Member outputs land in plain CPU memory, freed with their response.
AllocatorPtr cpu_allocator();

std::string shape_text(const std::vector<int64_t>& shape);

}  // namespace coded
