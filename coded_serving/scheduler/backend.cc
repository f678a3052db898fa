// The backend's entry points: load checks, and an execute that hands its requests to the
// scheduler and returns at once (the backend owns them until they are answered).
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "client.h"
#include "fastpath.h"
#include "model.h"
#include "triton_util.h"

namespace coded {

uint64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

namespace {

constexpr uint32_t kBackendApiMajor = 1;
constexpr uint32_t kBackendApiMinor = 19;

TRITONSERVER_Error* error(TRITONSERVER_Error_Code code, const std::string& message) {
  return TRITONSERVER_ErrorNew(code, message.c_str());
}

ModelState& model_of(TRITONBACKEND_ModelInstance* instance) {
  TRITONBACKEND_Model* model = nullptr;
  check(TRITONBACKEND_ModelInstanceModel(instance, &model));
  void* state = nullptr;
  check(TRITONBACKEND_ModelState(model, &state));
  return *static_cast<ModelState*>(state);
}

struct Rejection {
  TRITONSERVER_Error_Code code;
  std::string message;
};

// The request's queries, or why it cannot be served. Names, dtypes and shapes are checked by
// Triton against the config before execute; values are not.
std::shared_ptr<ClientRequest> accept(ModelState& model, TRITONBACKEND_ModelInstance* instance, TRITONBACKEND_Request* request,
                                      uint64_t start, Rejection& rejection) {
  const TensorDesc& desc = model.config.input;
  const std::string where = "input '" + desc.name + "': ";
  TRITONBACKEND_Input* input = nullptr;
  check(TRITONBACKEND_RequestInputByIndex(request, 0, &input));
  const char* name = nullptr;
  TRITONSERVER_DataType dtype;
  const int64_t* shape = nullptr;
  uint32_t dims = 0;
  uint64_t bytes = 0;
  uint32_t buffers = 0;
  check(TRITONBACKEND_InputProperties(input, &name, &dtype, &shape, &dims, &bytes, &buffers));
  std::vector<int64_t> got(shape, shape + dims);
  std::vector<int64_t> per_query(got.begin() + (dims ? 1 : 0), got.end());
  if (dims == 0 || per_query != desc.dims || dtype != model.input_type) {
    rejection = {TRITONSERVER_ERROR_INVALID_ARG, where + "expected " + desc.dtype + " [n, ...] rows of " +
                                                     shape_text(desc.dims) + ", got " + shape_text(got)};
    return nullptr;
  }
  const int n = static_cast<int>(got[0]);
  if (n < 1 || bytes != n * desc.row_bytes()) {
    rejection = {TRITONSERVER_ERROR_INVALID_ARG, where + "empty or inconsistent batch " + shape_text(got)};
    return nullptr;
  }
  // A copy, not the caller's buffer: Triton's HTTP frontend frees a request's input as soon
  // as its response is sent, and a straggler or a reserve may read the query after that.
  std::vector<char> rows;
  rows.reserve(bytes);
  for (uint32_t b = 0; b < buffers; ++b) {
    const void* base = nullptr;
    uint64_t size = 0;
    TRITONSERVER_MemoryType memory = TRITONSERVER_MEMORY_CPU;
    int64_t memory_id = 0;
    check(TRITONBACKEND_InputBuffer(input, b, &base, &size, &memory, &memory_id));
    if (memory == TRITONSERVER_MEMORY_GPU) throw TritonFailure(where + "GPU memory is not supported");
    rows.insert(rows.end(), static_cast<const char*>(base), static_cast<const char*>(base) + size);
  }
  for (int row = 0; row < n && desc.is_float(); ++row) {
    if (!row_finite(rows.data() + row * desc.row_bytes(), desc.elements(), desc.dtype)) {
      rejection = {TRITONSERVER_ERROR_INVALID_ARG, where + "input contains NaN or infinite values"};
      return nullptr;
    }
  }
  if (model.in_flight.fetch_add(n) + n > model.config.max_in_flight) {
    model.in_flight -= n;
    rejection = {TRITONSERVER_ERROR_UNAVAILABLE, "coded ensemble '" + model.config.name + "' already holds " +
                                                     "max_in_flight=" + std::to_string(model.config.max_in_flight) +
                                                     " queries; try again later"};
    return nullptr;
  }
  return std::make_shared<ClientRequest>(request, instance, start, std::move(rows), n, model.config.output.row_bytes());
}

}  // namespace
}  // namespace coded

using namespace coded;

extern "C" {

TRITONSERVER_Error* TRITONBACKEND_Initialize(TRITONBACKEND_Backend* backend) {
  uint32_t major = 0, minor = 0;
  if (TRITONSERVER_Error* e = TRITONBACKEND_ApiVersion(&major, &minor)) return e;
  if (major != kBackendApiMajor || minor < kBackendApiMinor)
    return error(TRITONSERVER_ERROR_UNSUPPORTED,
                 "coded_ensemble backend needs Triton backend API " + std::to_string(kBackendApiMajor) + "." +
                     std::to_string(kBackendApiMinor) + " or a later minor version; this server speaks " +
                     std::to_string(major) + "." + std::to_string(minor));
  try {
    auto families = std::make_unique<MetricFamilies>();
    check(TRITONBACKEND_BackendSetState(backend, families.get()));
    families.release();
    return nullptr;
  } catch (const std::exception& failure) {
    return error(TRITONSERVER_ERROR_INTERNAL, std::string("coded_ensemble backend: ") + failure.what());
  }
}

TRITONSERVER_Error* TRITONBACKEND_Finalize(TRITONBACKEND_Backend* backend) {
  void* families = nullptr;
  if (TRITONSERVER_Error* e = TRITONBACKEND_BackendState(backend, &families)) return e;
  delete static_cast<MetricFamilies*>(families);
  return nullptr;
}

TRITONSERVER_Error* TRITONBACKEND_ModelInitialize(TRITONBACKEND_Model* model) {
  const char* name = "";
  try {
    check(TRITONBACKEND_ModelName(model, &name));
    TRITONSERVER_Message* raw = nullptr;
    check(TRITONBACKEND_ModelConfig(model, 1, &raw));
    MessagePtr message(raw);
    const char* json = nullptr;
    size_t size = 0;
    check(TRITONSERVER_MessageSerializeToJson(raw, &json, &size));
    EnsembleConfig config = EnsembleConfig::from_model_config(std::string(json, size));
    TRITONSERVER_Server* server = nullptr;
    check(TRITONBACKEND_ModelServer(model, &server));
    TRITONBACKEND_Backend* backend = nullptr;
    check(TRITONBACKEND_ModelBackend(model, &backend));
    void* families = nullptr;
    check(TRITONBACKEND_BackendState(backend, &families));
    auto state = std::make_unique<ModelState>(std::move(config), server, *static_cast<MetricFamilies*>(families));
    check(TRITONBACKEND_ModelSetState(model, state.get()));
    state.release();
    return nullptr;
  } catch (const std::invalid_argument& bad) {
    return error(TRITONSERVER_ERROR_INVALID_ARG, std::string("coded ensemble '") + name + "': " + bad.what());
  } catch (const std::exception& failure) {
    return error(TRITONSERVER_ERROR_INTERNAL, std::string("coded ensemble '") + name + "': " + failure.what());
  }
}

TRITONSERVER_Error* TRITONBACKEND_ModelFinalize(TRITONBACKEND_Model* model) {
  void* state = nullptr;
  if (TRITONSERVER_Error* e = TRITONBACKEND_ModelState(model, &state)) return e;
  delete static_cast<ModelState*>(state);
  return nullptr;
}

TRITONSERVER_Error* TRITONBACKEND_ModelInstanceExecute(TRITONBACKEND_ModelInstance* instance,
                                                       TRITONBACKEND_Request** requests, const uint32_t count) {
  const uint64_t start = now_ns();
  std::vector<std::shared_ptr<ClientRequest>> clients;
  uint64_t queries = 0;
  try {
    ModelState& model = model_of(instance);
    for (uint32_t r = 0; r < count; ++r) {
      Rejection rejection{TRITONSERVER_ERROR_INTERNAL, ""};
      std::shared_ptr<ClientRequest> client;
      try {
        client = accept(model, instance, requests[r], start, rejection);
      } catch (const TritonFailure& failure) {
        rejection.message = failure.what();
      }
      if (client) {
        queries += client->num_queries;
        clients.push_back(std::move(client));
        continue;
      }
      reject(instance, requests[r], rejection.code, rejection.message, start);
    }
    if (!clients.empty()) model.scheduler.submit(clients);
  } catch (const std::exception& failure) {
    log(TRITONSERVER_LOG_ERROR, std::string("coded_ensemble execute: ") + failure.what());
  }
  const uint64_t end = now_ns();
  TRITONSERVER_ErrorDelete(TRITONBACKEND_ModelInstanceReportBatchStatistics(instance, queries, start, start, end, end));
  return nullptr;
}

}  // extern "C"
