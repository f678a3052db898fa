#include "calls.h"

#include <cstdlib>

namespace coded {
namespace {

TRITONSERVER_Error* allocate(TRITONSERVER_ResponseAllocator*, const char*, size_t byte_size, TRITONSERVER_MemoryType,
                             int64_t, void*, void** buffer, void** buffer_userp, TRITONSERVER_MemoryType* actual_type,
                             int64_t* actual_id) {
  *buffer = byte_size ? std::malloc(byte_size) : nullptr;
  *buffer_userp = nullptr;
  *actual_type = TRITONSERVER_MEMORY_CPU;
  *actual_id = 0;
  if (byte_size && !*buffer) return TRITONSERVER_ErrorNew(TRITONSERVER_ERROR_INTERNAL, "out of memory for a member output");
  return nullptr;
}

TRITONSERVER_Error* release(TRITONSERVER_ResponseAllocator*, void* buffer, void*, size_t, TRITONSERVER_MemoryType,
                            int64_t) {
  std::free(buffer);
  return nullptr;
}

}  // namespace

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

RequestPtr new_request(TRITONSERVER_Server* server, const std::string& model, const std::vector<InputSpec>& inputs,
                       const std::string& output) {
  TRITONSERVER_InferenceRequest* raw = nullptr;
  check(TRITONSERVER_InferenceRequestNew(&raw, server, model.c_str(), -1));
  RequestPtr request(raw);
  for (const InputSpec& input : inputs) {
    check(TRITONSERVER_InferenceRequestAddInput(raw, input.name.c_str(), input.dtype, input.shape.data(),
                                                input.shape.size()));
    for (const auto& [base, bytes] : input.chunks)
      check(TRITONSERVER_InferenceRequestAppendInputData(raw, input.name.c_str(), base, bytes,
                                                         TRITONSERVER_MEMORY_CPU, 0));
  }
  check(TRITONSERVER_InferenceRequestAddRequestedOutput(raw, output.c_str()));
  return request;
}

TensorView output_of(TRITONSERVER_InferenceResponse* response, const std::string& name) {
  check(TRITONSERVER_InferenceResponseError(response));
  uint32_t count = 0;
  check(TRITONSERVER_InferenceResponseOutputCount(response, &count));
  for (uint32_t i = 0; i < count; ++i) {
    const char* output_name = nullptr;
    TensorView view{};
    const int64_t* shape = nullptr;
    uint64_t dims = 0;
    const void* base = nullptr;
    TRITONSERVER_MemoryType memory = TRITONSERVER_MEMORY_CPU;
    int64_t memory_id = 0;
    void* userp = nullptr;
    check(TRITONSERVER_InferenceResponseOutput(response, i, &output_name, &view.dtype, &shape, &dims, &base,
                                               &view.bytes, &memory, &memory_id, &userp));
    if (name != output_name) continue;
    if (memory == TRITONSERVER_MEMORY_GPU) throw TritonFailure("output '" + name + "' is in GPU memory");
    view.shape.assign(shape, shape + dims);
    view.base = static_cast<const char*>(base);
    return view;
  }
  throw TritonFailure("no output '" + name + "'");
}

AllocatorPtr cpu_allocator() {
  TRITONSERVER_ResponseAllocator* allocator = nullptr;
  check(TRITONSERVER_ResponseAllocatorNew(&allocator, allocate, release, nullptr));
  return AllocatorPtr(allocator);
}

}  // namespace coded
