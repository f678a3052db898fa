// One coding group on the server: its queries (from any requests), the rows its members
// returned, its coded query, and its race.
#pragma once

#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "calls.h"
#include "client.h"
#include "config.h"
#include "core.h"
#include "metrics.h"

namespace coded {

struct MemberCall;
using SharedResponse = std::shared_ptr<TRITONSERVER_InferenceResponse>;  // shared by the groups it answers
SharedResponse share(ResponsePtr response);

struct Group {
  Group(uint64_t id, const EnsembleConfig& config, Race race);

  struct Query {
    std::shared_ptr<ClientRequest> client;  // kept until the group ends: member calls read its rows
    int row;
  };

  const char* query_row(int query) const;
  const char* slot_row(int slot) const { return query_row(race.slot_query(slot)); }
  // Appends a role's input rows to a member call's input (its shape is the caller's).
  void append_input(int role, InputSpec& input) const;
  void encode_by_sum();
  // The missing original from the others and the parity; returns the estimate for its slot.
  std::vector<float> decode_by_subtraction(int& missing) const;
  // The decoder model's inputs [1, workers, *out] and [1, workers], from the decode mask.
  std::vector<std::vector<char>> decoder_buffers() const;

  const uint64_t id;
  const EnsembleConfig& config;
  int turn = 0;  // Placement::preferred's turn
  uint64_t submit = 0;  // the scheduler's submit that last added a query
  Race race;
  std::vector<Query> queries;
  std::vector<SharedResponse> results;     // per role, kept for decoding
  std::vector<const char*> rows;           // per role: its row of that output
  std::vector<int> worker_of;              // per role: the worker its last task went to, -1 if none
  std::vector<std::weak_ptr<MemberCall>> call_of;
  std::vector<bool> held_back;             // per role: no healthy worker could take it
  std::vector<float> summed;               // the sum encoder's coded query
  SharedResponse encoded;                  // the encoder model's coded queries
  TensorView encoded_view{};
  bool encoder_started = false;
  std::string encoder_error;
  std::vector<int> awaiting_encoder;
  double wakeup = std::numeric_limits<double>::infinity();
  bool finished = false;
  GroupCounts counts;
};

}  // namespace coded
