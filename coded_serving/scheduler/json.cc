#include "json.h"

#include <cctype>
#include <stdexcept>

namespace coded {
namespace {

class Reader {
 public:
  explicit Reader(const std::string& source) : s_(source) {}

  Json document() {
    Json value = any();
    skip_space();
    if (pos_ != s_.size()) fail("trailing characters");
    return value;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw std::invalid_argument("malformed JSON at offset " + std::to_string(pos_) + ": " + what);
  }

  void skip_space() {
    while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
  }

  char peek() {
    skip_space();
    if (pos_ >= s_.size()) fail("unexpected end");
    return s_[pos_];
  }

  void expect(char c) {
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++pos_;
  }

  bool literal(const char* word) {
    std::string w(word);
    if (s_.compare(pos_, w.size(), w) != 0) return false;
    pos_ += w.size();
    return true;
  }

  Json any() {
    Json value;
    char c = peek();
    if (c == '{') {
      value.kind = Json::Kind::Object;
      ++pos_;
      if (peek() == '}') return ++pos_, value;
      while (true) {
        std::string key = string();
        expect(':');
        value.fields[key] = any();
        if (peek() == ',') { ++pos_; continue; }
        expect('}');
        return value;
      }
    }
    if (c == '[') {
      value.kind = Json::Kind::Array;
      ++pos_;
      if (peek() == ']') return ++pos_, value;
      while (true) {
        value.items.push_back(any());
        if (peek() == ',') { ++pos_; continue; }
        expect(']');
        return value;
      }
    }
    if (c == '"') {
      value.kind = Json::Kind::String;
      value.text = string();
      return value;
    }
    if (literal("true") || literal("false")) {
      value.kind = Json::Kind::Bool;
      value.boolean = c == 't';
      return value;
    }
    if (literal("null")) return value;
    size_t start = pos_;
    while (pos_ < s_.size() && (std::isdigit(static_cast<unsigned char>(s_[pos_])) ||
                                std::string("+-.eE").find(s_[pos_]) != std::string::npos)) ++pos_;
    if (start == pos_) fail("unexpected character");
    value.kind = Json::Kind::Number;
    value.text = s_.substr(start, pos_ - start);
    return value;
  }

  std::string string() {
    expect('"');
    std::string out;
    while (pos_ < s_.size() && s_[pos_] != '"') {
      char c = s_[pos_++];
      if (c != '\\') { out += c; continue; }
      if (pos_ >= s_.size()) fail("unfinished escape");
      char e = s_[pos_++];
      switch (e) {
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'u': {  // configs are ASCII; anything else is kept as '?'
          if (pos_ + 4 > s_.size()) fail("short \\u escape");
          unsigned code = std::stoul(s_.substr(pos_, 4), nullptr, 16);
          out += code < 0x80 ? static_cast<char>(code) : '?';
          pos_ += 4;
          break;
        }
        default: out += e;
      }
    }
    if (pos_ >= s_.size()) fail("unfinished string");
    ++pos_;
    return out;
  }

  const std::string& s_;
  size_t pos_ = 0;
};

}  // namespace

Json Json::parse(const std::string& source) { return Reader(source).document(); }

const Json* Json::find(const std::string& key) const {
  auto it = fields.find(key);
  return it == fields.end() ? nullptr : &it->second;
}

long long Json::as_int() const {
  if (kind != Kind::Number && kind != Kind::String) throw std::invalid_argument("not an integer");
  size_t used = 0;
  long long value = std::stoll(text, &used);
  if (used != text.size()) throw std::invalid_argument("not an integer: " + text);
  return value;
}

}  // namespace coded
