// A client request the backend owns until every query is answered and no member call reads
// its queries any more, and its one response.
#pragma once

#include <string>
#include <vector>

#include "triton_util.h"

namespace coded {

struct ClientRequest {
  ClientRequest(TRITONBACKEND_Request* r, TRITONBACKEND_ModelInstance* i, uint64_t start_ns, std::vector<char> queries,
                int n, size_t answer_row_bytes)
      : request(r),
        instance(i),
        exec_start_ns(start_ns),
        num_queries(n),
        input(std::move(queries)),
        answers(n * answer_row_bytes),
        reconstructed(n, false) {}
  ~ClientRequest() { TRITONSERVER_ErrorDelete(TRITONBACKEND_RequestRelease(request, TRITONSERVER_REQUEST_RELEASE_ALL)); }
  ClientRequest(const ClientRequest&) = delete;
  ClientRequest& operator=(const ClientRequest&) = delete;

  TRITONBACKEND_Request* const request;
  TRITONBACKEND_ModelInstance* const instance;  // the execute that received it, for statistics
  const uint64_t exec_start_ns;
  const int num_queries;
  const std::vector<char> input;  // the query rows, back to back
  std::vector<char> answers;
  std::vector<bool> reconstructed;
  int resolved = 0;
  std::string error;
  TRITONSERVER_Error_Code error_code = TRITONSERVER_ERROR_UNAVAILABLE;
};

// Sends the client's one response: its answers, or its error. Returns whether it succeeded.
bool respond(ClientRequest& client, const std::string& output_name, TRITONSERVER_DataType output_type,
             const std::vector<int64_t>& output_dims);

// Answers one request at once with an error, and hands it back to Triton.
void reject(TRITONBACKEND_ModelInstance* instance, TRITONBACKEND_Request* request, TRITONSERVER_Error_Code code,
            const std::string& message, uint64_t exec_start_ns);

}  // namespace coded
