// A self-contained reader of sentencepiece models (tokenizer.model, a protobuf ModelProto) and the BPE
// encoder/decoder of sentencepiece, so that exec/ does not link libsentencepiece (whose embedded protobuf
// clashes with the one libtorch loads) and builds wherever libtorch does.
//
// Supported: BPE models (LLaMA, Vicuna, Mistral), identity normalisation with the dummy prefix and
// whitespace escaping, user-defined symbols, byte fallback. Models with an NFKC charsmap are normalised as
// identity (their rules only change rare characters); unigram models are refused.
#include "adaptlink/exec/tokenizer.hpp"

#include <cstring>
#include <algorithm>
#include <fstream>
#include <queue>
#include <sstream>
#include <unordered_map>

namespace adaptlink::exec {
namespace {

enum PieceType { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

struct Piece {
  std::string text;
  float score = 0;
  int type = kNormal;
};

// Minimal protobuf wire-format reader.
class Wire {
 public:
  Wire(const char* p, size_t n) : p_(p), end_(p + n) {}
  bool done() const { return p_ >= end_; }
  bool varint(uint64_t& v) {
    v = 0;
    for (int shift = 0; shift < 64 && p_ < end_; shift += 7) {
      const auto b = static_cast<uint8_t>(*p_++);
      v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if ((b & 0x80) == 0) return true;
    }
    return false;
  }
  // Reads a field header; returns false at the end or on malformed data.
  bool field(int& number, int& wire_type) {
    uint64_t key = 0;
    if (!varint(key)) return false;
    number = static_cast<int>(key >> 3);
    wire_type = static_cast<int>(key & 7);
    return true;
  }
  bool bytes(std::string_view& out) {
    uint64_t len = 0;
    if (!varint(len) || len > static_cast<uint64_t>(end_ - p_)) return false;
    out = std::string_view(p_, len);
    p_ += len;
    return true;
  }
  bool fixed32(uint32_t& v) {
    if (end_ - p_ < 4) return false;
    std::memcpy(&v, p_, 4);
    p_ += 4;
    return true;
  }
  bool skip(int wire_type) {
    uint64_t v = 0;
    std::string_view s;
    uint32_t f = 0;
    switch (wire_type) {
      case 0:
        return varint(v);
      case 1:
        if (end_ - p_ < 8) return false;
        p_ += 8;
        return true;
      case 2:
        return bytes(s);
      case 5:
        return fixed32(f);
      default:
        return false;
    }
  }

 private:
  const char* p_;
  const char* end_;
};

size_t utf8_len(unsigned char c) {
  if (c < 0x80) return 1;
  if ((c >> 5) == 0x6) return 2;
  if ((c >> 4) == 0xe) return 3;
  if ((c >> 3) == 0x1e) return 4;
  return 1;  // invalid lead byte: one byte
}

const std::string kSpace = "\xe2\x96\x81";  // U+2581 LOWER ONE EIGHTH BLOCK

}  // namespace

struct Tokenizer::Impl {
  std::vector<Piece> pieces;
  std::unordered_map<std::string, int> normal;    // NORMAL / USER_DEFINED / UNUSED pieces -> id
  std::unordered_map<std::string, int> reserved;  // CONTROL / UNKNOWN / BYTE pieces -> id
  std::vector<std::string> user_defined;          // matched greedily (longest first) before BPE
  int unk = 0;
  int bos = -1;
  int eos = -1;
  int byte_ids[256];
  bool byte_fallback = false;
  bool add_dummy_prefix = true;
  bool remove_extra_whitespaces = true;
  bool escape_whitespaces = true;

  int piece_id(std::string_view s) const {
    auto it = reserved.find(std::string(s));
    if (it != reserved.end()) return it->second;
    auto jt = normal.find(std::string(s));
    return jt != normal.end() ? jt->second : -1;
  }

  std::string normalize(std::string_view text) const {
    std::string s(text);
    if (remove_extra_whitespaces) {
      std::string out;
      bool space = true;  // drops leading spaces
      for (char c : s) {
        if (c == ' ') {
          if (!space) out.push_back(' ');
          space = true;
        } else {
          out.push_back(c);
          space = false;
        }
      }
      while (!out.empty() && out.back() == ' ') out.pop_back();
      s = out;
    }
    if (s.empty()) return s;
    if (add_dummy_prefix) s.insert(s.begin(), ' ');
    if (escape_whitespaces) {
      std::string out;
      for (char c : s) {
        if (c == ' ') {
          out += kSpace;
        } else {
          out.push_back(c);
        }
      }
      s = out;
    }
    return s;
  }

  std::vector<int64_t> encode(std::string_view text) const {
    const std::string norm = normalize(text);
    struct Symbol {
      int prev;
      int next;
      size_t begin;
      size_t len;
      bool freeze;
    };
    std::vector<Symbol> symbols;
    for (size_t pos = 0; pos < norm.size();) {
      size_t len = 0;
      bool freeze = false;
      for (const auto& u : user_defined) {
        if (norm.compare(pos, u.size(), u) == 0) {
          len = u.size();
          freeze = true;
          break;
        }
      }
      if (len == 0) len = std::min(utf8_len(static_cast<unsigned char>(norm[pos])), norm.size() - pos);
      const int index = static_cast<int>(symbols.size());
      symbols.push_back({index - 1, -1, pos, len, freeze});
      if (index > 0) symbols[index - 1].next = index;
      pos += len;
    }
    struct Pair {
      int left;
      int right;
      float score;
      size_t size;
    };
    auto worse = [](const Pair& a, const Pair& b) {
      return a.score != b.score ? a.score < b.score : a.left > b.left;  // best score, then leftmost, on top
    };
    std::priority_queue<Pair, std::vector<Pair>, decltype(worse)> agenda(worse);
    auto maybe_add = [&](int left, int right) {
      if (left < 0 || right < 0 || symbols[left].freeze || symbols[right].freeze) return;
      const std::string_view piece(norm.data() + symbols[left].begin, symbols[left].len + symbols[right].len);
      auto it = normal.find(std::string(piece));
      if (it == normal.end()) return;
      agenda.push({left, right, pieces[it->second].score, piece.size()});
    };
    for (size_t i = 1; i < symbols.size(); ++i) maybe_add(static_cast<int>(i) - 1, static_cast<int>(i));
    while (!agenda.empty()) {
      const Pair top = agenda.top();
      agenda.pop();
      Symbol& l = symbols[top.left];
      Symbol& r = symbols[top.right];
      if (l.len == 0 || r.len == 0 || l.len + r.len != top.size || l.next != top.right) continue;
      l.len += r.len;
      l.next = r.next;
      if (r.next >= 0) symbols[r.next].prev = top.left;
      r.len = 0;
      maybe_add(l.prev, top.left);
      maybe_add(top.left, l.next);
    }
    std::vector<int64_t> ids;
    for (int i = symbols.empty() ? -1 : 0; i >= 0; i = symbols[i].next) {
      const std::string_view piece(norm.data() + symbols[i].begin, symbols[i].len);
      int id = piece_id(piece);
      if (id >= 0 && pieces[id].type != kUnused) {
        ids.push_back(id);
      } else if (byte_fallback) {
        for (unsigned char c : piece) ids.push_back(byte_ids[c] >= 0 ? byte_ids[c] : unk);
      } else {
        ids.push_back(unk);
      }
    }
    return ids;
  }
};

Tokenizer::Tokenizer() : impl_(std::make_unique<Impl>()) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Expected<Tokenizer> Tokenizer::load(const std::filesystem::path& model_file) {
  auto bad = [&](const std::string& what) { return Error{fmt::format("bad sentencepiece model: {}", what), model_file.string(), 0, 0}; };
  std::ifstream in(model_file, std::ios::binary);
  if (!in) return Error{"cannot open tokenizer model", model_file.string(), 0, 0};
  std::ostringstream buffer;
  buffer << in.rdbuf();
  const std::string data = buffer.str();
  Tokenizer tok;
  Impl& m = *tok.impl_;
  std::fill(std::begin(m.byte_ids), std::end(m.byte_ids), -1);
  int model_type = 1;  // proto default: UNIGRAM
  Wire wire(data.data(), data.size());
  int number = 0;
  int wt = 0;
  while (!wire.done()) {
    if (!wire.field(number, wt)) return bad("malformed protobuf");
    if (wt == 2 && (number == 1 || number == 2 || number == 3)) {
      std::string_view sub;
      if (!wire.bytes(sub)) return bad("truncated message");
      Wire w(sub.data(), sub.size());
      int n = 0;
      int t = 0;
      if (number == 1) {  // SentencePiece {1: piece, 2: score, 3: type}
        Piece piece;
        while (!w.done()) {
          if (!w.field(n, t)) return bad("malformed piece");
          std::string_view s;
          uint32_t f = 0;
          uint64_t v = 0;
          if (n == 1 && t == 2) {
            if (!w.bytes(s)) return bad("malformed piece");
            piece.text = std::string(s);
          } else if (n == 2 && t == 5) {
            if (!w.fixed32(f)) return bad("malformed piece");
            std::memcpy(&piece.score, &f, 4);
          } else if (n == 3 && t == 0) {
            if (!w.varint(v)) return bad("malformed piece");
            piece.type = static_cast<int>(v);
          } else if (!w.skip(t)) {
            return bad("malformed piece");
          }
        }
        m.pieces.push_back(std::move(piece));
      } else if (number == 2) {  // TrainerSpec: 3 model_type
        while (!w.done()) {
          if (!w.field(n, t)) return bad("malformed trainer spec");
          uint64_t v = 0;
          if (n == 3 && t == 0) {
            if (!w.varint(v)) return bad("malformed trainer spec");
            model_type = static_cast<int>(v);
          } else if (!w.skip(t)) {
            return bad("malformed trainer spec");
          }
        }
      } else {  // NormalizerSpec: 3 add_dummy_prefix, 4 remove_extra_whitespaces, 5 escape_whitespaces
        while (!w.done()) {
          if (!w.field(n, t)) return bad("malformed normalizer spec");
          uint64_t v = 0;
          if ((n == 3 || n == 4 || n == 5) && t == 0) {
            if (!w.varint(v)) return bad("malformed normalizer spec");
            (n == 3 ? m.add_dummy_prefix : n == 4 ? m.remove_extra_whitespaces : m.escape_whitespaces) = v != 0;
          } else if (!w.skip(t)) {
            return bad("malformed normalizer spec");
          }
        }
      }
    } else if (!wire.skip(wt)) {
      return bad("malformed protobuf");
    }
  }
  if (m.pieces.empty()) return bad("no pieces");
  if (model_type != 2) return bad(fmt::format("model type {} is not BPE (only BPE models are supported)", model_type));
  for (int i = 0; i < static_cast<int>(m.pieces.size()); ++i) {
    const auto& p = m.pieces[i];
    switch (p.type) {
      case kNormal:
      case kUserDefined:
      case kUnused:
        m.normal.emplace(p.text, i);
        if (p.type == kUserDefined) m.user_defined.push_back(p.text);
        break;
      case kUnknown:
        m.unk = i;
        m.reserved.emplace(p.text, i);
        break;
      case kControl:
        if (p.text == "<s>") m.bos = i;
        if (p.text == "</s>") m.eos = i;
        m.reserved.emplace(p.text, i);
        break;
      case kByte:
        m.reserved.emplace(p.text, i);
        if (p.text.size() == 6 && p.text.rfind("<0x", 0) == 0) {
          m.byte_ids[std::stoi(p.text.substr(3, 2), nullptr, 16)] = i;
          m.byte_fallback = true;
        }
        break;
      default:
        break;
    }
  }
  std::sort(m.user_defined.begin(), m.user_defined.end(),
            [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
  return tok;
}

std::vector<int64_t> Tokenizer::encode(std::string_view text) const { return impl_->encode(text); }

std::string Tokenizer::decode(const std::vector<int64_t>& ids) const {
  const auto& m = *impl_;
  std::string out;
  for (int64_t id : ids) {
    if (id < 0 || id >= static_cast<int64_t>(m.pieces.size())) continue;
    const Piece& p = m.pieces[id];
    if (p.type == kControl || p.type == kUnknown) {
      if (p.type == kUnknown) out += " \xe2\x81\x87 ";  // sentencepiece's unknown surface
      continue;
    }
    if (p.type == kByte) {
      out.push_back(static_cast<char>(std::stoi(p.text.substr(3, 2), nullptr, 16)));
      continue;
    }
    out += p.text;
  }
  std::string text;
  for (size_t pos = 0; pos < out.size();) {
    if (out.compare(pos, kSpace.size(), kSpace) == 0) {
      text.push_back(' ');
      pos += kSpace.size();
    } else {
      text.push_back(out[pos++]);
    }
  }
  if (m.add_dummy_prefix && !text.empty() && text.front() == ' ') text.erase(text.begin());
  return text;
}

int Tokenizer::vocab_size() const { return static_cast<int>(impl_->pieces.size()); }
int Tokenizer::bos_id() const { return impl_->bos; }
int Tokenizer::eos_id() const { return impl_->eos; }

std::string llava_prompt_text(std::string_view prompt, bool with_image) {
  if (!with_image || prompt.find("<image>") != std::string_view::npos) return fmt::format("USER: {} ASSISTANT:", prompt);
  return fmt::format("USER: <image>\n{} ASSISTANT:", prompt);
}

std::vector<int64_t> tokenize_with_images(const Tokenizer& tokenizer, std::string_view text, int64_t image_token_id,
                                          int image_tokens) {
  std::vector<int64_t> ids;
  if (tokenizer.bos_id() >= 0) ids.push_back(tokenizer.bos_id());
  constexpr std::string_view kImage = "<image>";
  size_t pos = 0;
  while (true) {
    const size_t next = text.find(kImage, pos);
    const std::string_view part = text.substr(pos, next == std::string_view::npos ? std::string_view::npos : next - pos);
    if (!part.empty()) {
      auto piece_ids = tokenizer.encode(part);
      ids.insert(ids.end(), piece_ids.begin(), piece_ids.end());
    }
    if (next == std::string_view::npos) break;
    ids.insert(ids.end(), static_cast<size_t>(image_tokens), image_token_id);
    pos = next + kImage.size();
  }
  return ids;
}

}  // namespace adaptlink::exec
