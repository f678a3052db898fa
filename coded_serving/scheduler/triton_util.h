// RAII owners of Triton objects and small helpers shared by the backend's files.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>

#include "triton_api.h"

namespace coded {

struct ErrorDeleter {
  void operator()(TRITONSERVER_Error* e) const { TRITONSERVER_ErrorDelete(e); }
};
struct ResponseDeleter {
  void operator()(TRITONSERVER_InferenceResponse* r) const { TRITONSERVER_ErrorDelete(TRITONSERVER_InferenceResponseDelete(r)); }
};
struct RequestDeleter {
  void operator()(TRITONSERVER_InferenceRequest* r) const { TRITONSERVER_ErrorDelete(TRITONSERVER_InferenceRequestDelete(r)); }
};
struct AllocatorDeleter {
  void operator()(TRITONSERVER_ResponseAllocator* a) const {
    TRITONSERVER_ErrorDelete(TRITONSERVER_ResponseAllocatorDelete(a));
  }
};
struct MessageDeleter {
  void operator()(TRITONSERVER_Message* m) const { TRITONSERVER_ErrorDelete(TRITONSERVER_MessageDelete(m)); }
};

using ErrorPtr = std::unique_ptr<TRITONSERVER_Error, ErrorDeleter>;
using ResponsePtr = std::unique_ptr<TRITONSERVER_InferenceResponse, ResponseDeleter>;
using RequestPtr = std::unique_ptr<TRITONSERVER_InferenceRequest, RequestDeleter>;
using AllocatorPtr = std::unique_ptr<TRITONSERVER_ResponseAllocator, AllocatorDeleter>;
using MessagePtr = std::unique_ptr<TRITONSERVER_Message, MessageDeleter>;

// A failed Triton call, as a C++ exception inside the backend; entry points turn it back.
struct TritonFailure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

inline void check(TRITONSERVER_Error* error) {
  if (!error) return;
  ErrorPtr owned(error);
  throw TritonFailure(TRITONSERVER_ErrorMessage(error));
}

inline void log(TRITONSERVER_LogLevel level, const std::string& message) {
  TRITONSERVER_ErrorDelete(TRITONSERVER_LogMessage(level, __FILE__, __LINE__, message.c_str()));
}

uint64_t now_ns();

}  // namespace coded
