// A small JSON reader for the model configuration Triton hands the backend.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace coded {

struct Json {
  enum class Kind { Null, Bool, Number, String, Array, Object };
  Kind kind = Kind::Null;
  bool boolean = false;
  std::string text;  // a string's value, or a number as written
  std::vector<Json> items;
  std::map<std::string, Json> fields;

  // Throws std::invalid_argument on malformed input.
  static Json parse(const std::string& source);

  const Json* find(const std::string& key) const;
  // An integer written as a number or as a string (protobuf's JSON writes int64 as strings).
  long long as_int() const;
};

}  // namespace coded
