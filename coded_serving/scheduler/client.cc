#include "client.h"

#include <cstring>

#include "config.h"

namespace coded {
namespace {

void write_output(TRITONBACKEND_Response* response, const std::string& name, TRITONSERVER_DataType dtype,
                  const std::vector<int64_t>& shape, const void* data, size_t bytes) {
  TRITONBACKEND_Output* output = nullptr;
  check(TRITONBACKEND_ResponseOutput(response, &output, name.c_str(), dtype, shape.data(), shape.size()));
  void* buffer = nullptr;
  TRITONSERVER_MemoryType memory = TRITONSERVER_MEMORY_CPU;
  int64_t memory_id = 0;
  check(TRITONBACKEND_OutputBuffer(output, &buffer, bytes, &memory, &memory_id));
  if (memory == TRITONSERVER_MEMORY_GPU) throw TritonFailure("output '" + name + "' was given GPU memory");
  std::memcpy(buffer, data, bytes);
}

// Before the response is sent: a client that reads the statistics right after its answer must
// find its request counted.
void report_statistics(TRITONBACKEND_ModelInstance* instance, TRITONBACKEND_Request* request, bool success,
                       uint64_t exec_start_ns) {
  const uint64_t end = now_ns();
  TRITONSERVER_ErrorDelete(
      TRITONBACKEND_ModelInstanceReportStatistics(instance, request, success, exec_start_ns, exec_start_ns, end, end));
}

}  // namespace

bool respond(ClientRequest& client, const std::string& output_name, TRITONSERVER_DataType output_type,
             const std::vector<int64_t>& output_dims) {
  ErrorPtr error;
  TRITONBACKEND_Response* raw = nullptr;
  if (TRITONSERVER_Error* e = TRITONBACKEND_ResponseNew(&raw, client.request)) {
    error.reset(e);
    log(TRITONSERVER_LOG_ERROR, std::string("cannot answer a request: ") + TRITONSERVER_ErrorMessage(e));
  } else {
    if (!client.error.empty()) {
      error.reset(TRITONSERVER_ErrorNew(client.error_code, client.error.c_str()));
    } else {
      try {
        std::vector<int64_t> shape{client.num_queries};
        shape.insert(shape.end(), output_dims.begin(), output_dims.end());
        write_output(raw, output_name, output_type, shape, client.answers.data(), client.answers.size());
        std::vector<char> flags(client.reconstructed.begin(), client.reconstructed.end());
        write_output(raw, RECONSTRUCTED, TRITONSERVER_TYPE_BOOL, {client.num_queries, 1}, flags.data(), flags.size());
      } catch (const TritonFailure& failure) {
        error.reset(TRITONSERVER_ErrorNew(TRITONSERVER_ERROR_INTERNAL, failure.what()));
      }
    }
  }
  report_statistics(client.instance, client.request, !error, client.exec_start_ns);
  if (raw) TRITONSERVER_ErrorDelete(TRITONBACKEND_ResponseSend(raw, TRITONSERVER_RESPONSE_COMPLETE_FINAL, error.get()));
  return !error;
}

void reject(TRITONBACKEND_ModelInstance* instance, TRITONBACKEND_Request* request, TRITONSERVER_Error_Code code,
            const std::string& message, uint64_t exec_start_ns) {
  TRITONBACKEND_Response* response = nullptr;
  ErrorPtr failed(TRITONBACKEND_ResponseNew(&response, request));
  if (failed) log(TRITONSERVER_LOG_ERROR, std::string("cannot answer a request: ") + TRITONSERVER_ErrorMessage(failed.get()));
  report_statistics(instance, request, false, exec_start_ns);
  if (response) {
    ErrorPtr error(TRITONSERVER_ErrorNew(code, message.c_str()));
    TRITONSERVER_ErrorDelete(TRITONBACKEND_ResponseSend(response, TRITONSERVER_RESPONSE_COMPLETE_FINAL, error.get()));
  }
  TRITONSERVER_ErrorDelete(TRITONBACKEND_RequestRelease(request, TRITONSERVER_REQUEST_RELEASE_ALL));
}

}  // namespace coded
