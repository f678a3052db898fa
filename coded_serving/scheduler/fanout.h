// One fan-out on the server: the client requests of an execute, their coding groups, the
// member, encoder and decoder calls, and the race that answers every query.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "calls.h"
#include "core.h"
#include "model.h"

namespace coded {

// A client request the backend owns until it is answered and no member call reads its queries.
struct ClientRequest {
  ClientRequest(TRITONBACKEND_Request* r, std::vector<char> queries, int n, size_t answer_row_bytes)
      : request(r), num_queries(n), input(std::move(queries)), answers(n * answer_row_bytes), reconstructed(n, false) {}
  ~ClientRequest() { TRITONSERVER_ErrorDelete(TRITONBACKEND_RequestRelease(request, TRITONSERVER_REQUEST_RELEASE_ALL)); }
  ClientRequest(const ClientRequest&) = delete;
  ClientRequest& operator=(const ClientRequest&) = delete;

  TRITONBACKEND_Request* const request;
  const int num_queries;
  const std::vector<char> input;  // the query rows, back to back
  std::vector<char> answers;
  std::vector<bool> reconstructed;
  int resolved = 0;
  std::string error;
  TRITONSERVER_Error_Code error_code = TRITONSERVER_ERROR_UNAVAILABLE;
};

// Answers one request at once with an error, and hands it back to Triton.
void reject(TRITONBACKEND_ModelInstance* instance, TRITONBACKEND_Request* request, TRITONSERVER_Error_Code code,
            const std::string& message, uint64_t exec_start_ns);

class Fanout : public std::enable_shared_from_this<Fanout> {
 public:
  // Lays the clients' queries out in coding groups and sends the first member calls.
  static void start(ModelState& model, TRITONBACKEND_ModelInstance* instance,
                    std::vector<std::shared_ptr<ClientRequest>> clients, uint64_t exec_start_ns);

  // Triton's callbacks
  static void on_member_response(TRITONSERVER_InferenceResponse* response, uint32_t flags, void* userp);
  static void on_encoder_response(TRITONSERVER_InferenceResponse* response, uint32_t flags, void* userp);
  static void on_decoder_response(TRITONSERVER_InferenceResponse* response, uint32_t flags, void* userp);
  static void on_release(TRITONSERVER_InferenceRequest* request, uint32_t flags, void* userp);

 private:
  struct Query {
    ClientRequest* owner;
    int row;
  };
  Fanout(ModelState& model, TRITONBACKEND_ModelInstance* instance, uint64_t exec_start_ns, Layout layout, Plan plan,
         std::vector<std::shared_ptr<ClientRequest>> clients);

  const char* query_row(int query) const;
  void drive();
  void drive_locked(std::vector<int>& calls, std::vector<int>& decodes);
  void dispatch(const std::vector<int>& calls, const std::vector<int>& decodes);
  void schedule(double when);
  void apply(const std::vector<Fill>& fills, const std::vector<const char*>& sources);
  void resolve(int query, const char* answer, bool reconstructed);
  void fail(int query, const std::string& message);
  void respond(ClientRequest& client);
  void finish(const Actions& actions);
  void decode_by_subtraction(int group);
  std::string send_member(int worker);
  std::string send_encoder();
  std::string send_decoder(const std::vector<int>& groups);
  std::string send(RequestPtr request, int worker, TRITONSERVER_InferenceResponseCompleteFn_t on_response,
                   std::vector<std::vector<char>> buffers, std::vector<int> groups);
  void member_answered(int worker, ResponsePtr response);
  void encoder_answered(ResponsePtr response);
  void decoder_answered(ResponsePtr response, const std::vector<int>& groups, double start);
  void member_failed(int worker, const std::string& reason);

  ModelState& model_;
  const EnsembleConfig& config_;
  TRITONBACKEND_ModelInstance* const instance_;
  const uint64_t exec_start_ns_;
  // Declared first, so destroyed last: requests go back to Triton after every response we hold.
  std::vector<std::shared_ptr<ClientRequest>> clients_;
  std::vector<Query> queries_;

  std::mutex mutex_;  // guards everything below
  Race race_;
  std::vector<ResponsePtr> results_;               // per worker, kept for decoding
  std::vector<const char*> result_base_;           // their member output
  std::vector<TRITONSERVER_InferenceRequest*> in_flight_;  // per worker, until Triton releases it
  std::vector<float> summed_;                      // the sum encoder's coded queries
  ResponsePtr encoded_;                            // the encoder model's coded queries
  TensorView encoded_view_{};
  bool encoder_started_ = false;
  std::string encoder_error_;
  std::vector<int> awaiting_encoder_;
  FanoutCounts counts_;
  double scheduled_wakeup_;
};

}  // namespace coded
