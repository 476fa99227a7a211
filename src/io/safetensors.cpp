// safetensors reader/writer. See safetensors.h for the format and the API contract.
//
// Design notes
// * Untrusted input. The header is parsed with a SAX handler (not into a nlohmann DOM) so
//   that structure, types, duplicates and nesting are checked while parsing, and memory stays
//   proportional to what is actually kept (names, shapes), never to what a DOM would need for
//   a hostile 100 MiB header (a DOM node per array element costs ~16x the text).
// * Policy on holes: the reference implementation requires the tensors to tile the data buffer
//   exactly. We accept gaps between tensors and trailing bytes after the last one: every
//   tensor's byte range is validated on its own (in bounds, size == numel * element size,
//   no overlap), so a gap can never cause a wrong read, and it lets us read files of writers
//   that align tensor data. Overlaps are refused (two tensors aliasing bytes is a sign of a
//   crafted or corrupt file). Our writer never produces gaps.
// * Endianness: the format is little-endian and tensor bytes are copied verbatim, so only
//   little-endian hosts are supported (static_assert below).
#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <optional>
#include <unordered_set>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "util/atomic_file.h"
#include "util/error.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors I/O copies little-endian tensor bytes verbatim; big-endian hosts "
              "are not supported");
static_assert(sizeof(off_t) == 8, "64-bit file offsets are required for multi-GiB checkpoints");

namespace hd::io {
namespace {

// ---------------------------------------------------------------------------------------------
// dtypes

struct DtypeEntry {
  const char* name;
  c10::ScalarType type;
  size_t size;
};

constexpr DtypeEntry kDtypes[] = {
    {"F32", c10::ScalarType::Float, 4},   {"F16", c10::ScalarType::Half, 2},
    {"BF16", c10::ScalarType::BFloat16, 2}, {"F64", c10::ScalarType::Double, 8},
    {"I64", c10::ScalarType::Long, 8},    {"I32", c10::ScalarType::Int, 4},
    {"I16", c10::ScalarType::Short, 2},   {"I8", c10::ScalarType::Char, 1},
    {"U8", c10::ScalarType::Byte, 1},     {"BOOL", c10::ScalarType::Bool, 1},
};

// Valid safetensors dtypes that LibTorch 1.13 cannot represent; named in errors so that the
// user learns the file is fine but unsupported rather than corrupt.
constexpr const char* kUnsupportedDtypes[] = {"U16", "U32", "U64", "F8_E4M3", "F8_E5M2",
                                              "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4", "C64"};

const DtypeEntry* find_dtype(const std::string& name) {
  for (const auto& d : kDtypes)
    if (name == d.name) return &d;
  return nullptr;
}

const DtypeEntry* find_dtype(c10::ScalarType t) {
  for (const auto& d : kDtypes)
    if (t == d.type) return &d;
  return nullptr;
}

bool is_unsupported_dtype(const std::string& name) {
  for (const char* d : kUnsupportedDtypes)
    if (name == d) return true;
  return false;
}

// ---------------------------------------------------------------------------------------------
// message helpers

// Renders an untrusted string (tensor name, dtype, JSON error text) for an error message:
// quoted, control/non-ASCII bytes escaped, long strings cut, so that a hostile file cannot
// inject terminal escapes or megabytes of text into our logs.
std::string quote_name(const std::string& s, size_t max_len = 120) {
  std::string out = "'";
  for (size_t i = 0; i < s.size() && i < max_len; ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\'' && c != '\\') {
      out += static_cast<char>(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    }
  }
  if (s.size() > max_len) out += "...";
  return out + "'";
}

// Same without the quotes, for free-form text (exception messages).
std::string sanitized(const std::string& s, size_t max_len = 300) {
  std::string q = quote_name(s, max_len);
  return q.substr(1, q.size() - 2);
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string range_str(const TensorInfo& t) {
  return "[" + std::to_string(t.begin) + ", " + std::to_string(t.end) + "]";
}

std::string errno_text() { return std::strerror(errno); }

// ---------------------------------------------------------------------------------------------
// low-level reading

// Reads exactly n bytes at `offset`. pread (not a shared file position) keeps concurrent
// load() calls on one SafeTensorsFile safe. Chunked because Linux caps one read at ~2 GiB.
void pread_exact(int fd, void* buf, uint64_t n, uint64_t offset, const std::string& path,
                 const std::string& what) {
  auto* p = static_cast<char*>(buf);
  while (n > 0) {
    size_t chunk = static_cast<size_t>(std::min<uint64_t>(n, 1ull << 30));
    ssize_t r = ::pread(fd, p, chunk, static_cast<off_t>(offset));
    if (r < 0) {
      if (errno == EINTR) continue;
      throw Error(path + ": read error while reading " + what + ": " + errno_text());
    }
    if (r == 0)
      throw Error(path + ": unexpected end of file while reading " + what +
                  " (file truncated or modified after it was opened?)");
    p += r;
    n -= static_cast<uint64_t>(r);
    offset += static_cast<uint64_t>(r);
  }
}

// ---------------------------------------------------------------------------------------------
// header parsing

// Limits on a hostile header beyond the byte cap: nesting only occurs inside ignored unknown
// fields (legit headers are 3 levels deep), and shapes are bounded by kMaxRank.
constexpr int kMaxSkipDepth = 16;
// A std::map entry costs ~100 bytes while `"k":"",` costs 7 header bytes; without a cap a
// 100 MiB header could make us allocate ~1.5 GiB of metadata. Real files have a handful.
constexpr size_t kMaxMetadataEntries = 1 << 16;

// SAX handler that validates the header structure while nlohmann's parser walks it:
//   root object -> "__metadata__": object of string -> string
//               -> tensor name: object {"dtype": string, "shape": [uint...],
//                                       "data_offsets": [uint, uint], <unknown>: ignored}
// Every callback returns false on the first problem (which stops the parser) after storing a
// message in error(); exceptions are never thrown through the parser.
// Semantic checks that need the whole entry (dtype known, sizes, bounds) happen afterwards.
class HeaderParser {
 public:
  using json = nlohmann::json;
  using number_integer_t = json::number_integer_t;
  using number_unsigned_t = json::number_unsigned_t;
  using number_float_t = json::number_float_t;
  using string_t = json::string_t;
  using binary_t = json::binary_t;

  std::vector<TensorInfo> tensors;  // in header order
  std::map<std::string, std::string> metadata;
  const std::string& error() const { return error_; }

  bool null() { return scalar("null"); }
  bool boolean(bool) { return scalar("a boolean"); }
  bool number_integer(number_integer_t v) {
    // nlohmann reports non-negative integers as unsigned; "-0" is the only exception.
    if (v >= 0) return number_unsigned(static_cast<number_unsigned_t>(v));
    if (state_ == State::kShape)
      return fail(entry() + "negative dimension " + std::to_string(v) + " in shape");
    if (state_ == State::kOffsets)
      return fail(entry() + "negative value " + std::to_string(v) + " in data_offsets");
    return scalar("a negative integer");
  }
  bool number_unsigned(number_unsigned_t v) {
    if (state_ == State::kShape) {
      if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        return fail(entry() + "dimension " + std::to_string(v) + " in shape is too large");
      if (cur_.shape.size() >= kMaxRank)
        return fail(entry() + "shape has more than " + std::to_string(kMaxRank) + " dimensions");
      cur_.shape.push_back(static_cast<int64_t>(v));
      return true;
    }
    if (state_ == State::kOffsets) {
      if (n_offsets_ >= 2) return fail(entry() + "data_offsets must have exactly 2 elements");
      (n_offsets_++ == 0 ? cur_.begin : cur_.end) = v;
      return true;
    }
    return scalar("an integer");
  }
  bool number_float(number_float_t, const string_t&) {
    // Also what integers beyond the uint64 range parse as.
    return scalar("a non-integer number (or an integer out of range)");
  }
  bool string(string_t& s) {
    if (state_ == State::kMetaValue) {
      metadata.emplace(key_, std::move(s));  // duplicates were refused in key()
      state_ = State::kMeta;
      return true;
    }
    if (state_ == State::kEntryValue && field_ == "dtype") {
      cur_.dtype = std::move(s);
      state_ = State::kEntry;
      return true;
    }
    return scalar("a string");
  }
  bool binary(binary_t&) { return scalar("binary data"); }  // not produced by the JSON parser

  bool start_object(std::size_t) {
    switch (state_) {
      case State::kStart:
        state_ = State::kRoot;
        return true;
      case State::kRootValue:
        if (key_ == "__metadata__") {
          if (seen_metadata_) return fail("duplicate \"__metadata__\" entry");
          seen_metadata_ = true;
          state_ = State::kMeta;
        } else {
          cur_ = TensorInfo{};
          cur_.name = key_;
          fields_.clear();
          n_offsets_ = 0;
          state_ = State::kEntry;
        }
        return true;
      case State::kEntryValue:
        if (!is_known_field()) return start_skip();
        return fail(entry() + "field \"" + field_ + "\" must be " + expected_for_field() +
                    ", got an object");
      case State::kSkip:
        return nest_skip();
      default:
        return unexpected("an object");
    }
  }
  bool start_array(std::size_t) {
    switch (state_) {
      case State::kEntryValue:
        if (field_ == "shape") {
          state_ = State::kShape;
          return true;
        }
        if (field_ == "data_offsets") {
          state_ = State::kOffsets;
          return true;
        }
        if (!is_known_field()) return start_skip();
        return fail(entry() + "field \"" + field_ + "\" must be " + expected_for_field() +
                    ", got an array");
      case State::kSkip:
        return nest_skip();
      default:
        return unexpected("an array");
    }
  }
  bool key(string_t& k) {
    switch (state_) {
      case State::kRoot:
        // nlohmann's DOM would silently keep the last of duplicate keys; a file whose meaning
        // depends on the parser is refused instead.
        if (k != "__metadata__" && !names_.insert(k).second)
          return fail("duplicate tensor name " + quote_name(k));
        key_ = std::move(k);
        state_ = State::kRootValue;
        return true;
      case State::kMeta:
        if (metadata.count(k)) return fail("duplicate key " + quote_name(k) + " in __metadata__");
        if (metadata.size() >= kMaxMetadataEntries)
          return fail("__metadata__ has more than " + std::to_string(kMaxMetadataEntries) + " entries");
        key_ = std::move(k);
        state_ = State::kMetaValue;
        return true;
      case State::kEntry:
        if (!fields_.insert(k).second)
          return fail(entry() + "duplicate field " + quote_name(k));
        field_ = std::move(k);
        state_ = State::kEntryValue;
        return true;
      case State::kSkip:
        return true;
      default:
        return fail("internal error: unexpected key");  // the parser never does this
    }
  }
  bool end_object() {
    switch (state_) {
      case State::kRoot:
        state_ = State::kDone;
        return true;
      case State::kMeta:
        state_ = State::kRoot;
        return true;
      case State::kEntry:
        for (const char* f : {"dtype", "shape", "data_offsets"})
          if (!fields_.count(f)) return fail(entry() + "missing field \"" + f + "\"");
        tensors.push_back(std::move(cur_));
        state_ = State::kRoot;
        return true;
      case State::kSkip:
        return unnest_skip();
      default:
        return fail("internal error: unexpected end of object");
    }
  }
  bool end_array() {
    switch (state_) {
      case State::kShape:
        state_ = State::kEntry;
        return true;
      case State::kOffsets:
        if (n_offsets_ != 2) return fail(entry() + "data_offsets must have exactly 2 elements");
        state_ = State::kEntry;
        return true;
      case State::kSkip:
        return unnest_skip();
      default:
        return fail("internal error: unexpected end of array");
    }
  }
  bool parse_error(std::size_t pos, const std::string&, const nlohmann::detail::exception& ex) {
    // ex.what() quotes the offending input ("last read: ..."); sanitized() keeps it short.
    return fail("invalid JSON in header at byte " + std::to_string(pos) + ": " + sanitized(ex.what()));
  }

 private:
  enum class State {
    kStart,       // before the root value
    kRoot,        // in the root object, expecting a key or its end
    kRootValue,   // after a root key
    kMeta,        // in __metadata__, expecting a key or its end
    kMetaValue,   // after a metadata key
    kEntry,       // in a tensor entry, expecting a field name or its end
    kEntryValue,  // after a field name
    kShape,       // in the shape array
    kOffsets,     // in the data_offsets array
    kSkip,        // inside the value of an unknown field
    kDone,        // after the root object
  };

  bool fail(std::string msg) {
    if (error_.empty()) error_ = std::move(msg);
    return false;
  }
  std::string entry() const { return "tensor " + quote_name(cur_.name) + ": "; }
  bool is_known_field() const {
    return field_ == "dtype" || field_ == "shape" || field_ == "data_offsets";
  }
  std::string expected_for_field() const {
    if (field_ == "dtype") return "a string";
    if (field_ == "shape") return "an array of non-negative integers";
    return "an array of 2 non-negative integers";
  }

  // A scalar (or a string in a place that does not take one) arrived in the current state.
  bool scalar(const char* what) {
    switch (state_) {
      case State::kEntryValue:
        if (!is_known_field()) {  // unknown field with a scalar value: ignored
          state_ = State::kEntry;
          return true;
        }
        return fail(entry() + "field \"" + field_ + "\" must be " + expected_for_field() +
                    ", got " + what);
      case State::kSkip:
        return true;
      default:
        return unexpected(what);
    }
  }
  // A value of the wrong kind in a non-field position.
  bool unexpected(const std::string& what) {
    switch (state_) {
      case State::kStart:
        return fail("header is not a JSON object (got " + what + ")");
      case State::kRootValue:
        if (key_ == "__metadata__") return fail("\"__metadata__\" is not an object (got " + what + ")");
        return fail("entry for tensor " + quote_name(key_) + " is not an object (got " + what + ")");
      case State::kMetaValue:
        return fail("__metadata__ value for key " + quote_name(key_) + " is not a string (got " + what + ")");
      case State::kShape:
        return fail(entry() + "shape must be an array of non-negative integers (got " + what + ")");
      case State::kOffsets:
        return fail(entry() + "data_offsets must be 2 non-negative integers (got " + what + ")");
      default:
        return fail("unexpected " + what + " in header");
    }
  }

  bool start_skip() {
    state_ = State::kSkip;
    skip_depth_ = 1;
    return true;
  }
  bool nest_skip() {
    if (++skip_depth_ > kMaxSkipDepth)
      return fail(entry() + "unknown field \"" + field_ + "\" is nested too deeply");
    return true;
  }
  bool unnest_skip() {
    if (--skip_depth_ == 0) state_ = State::kEntry;
    return true;
  }

  State state_ = State::kStart;
  std::string error_;
  std::string key_;    // current root key or metadata key
  std::string field_;  // current field name inside a tensor entry
  TensorInfo cur_;
  std::unordered_set<std::string> fields_;  // fields seen in the current entry
  std::unordered_set<std::string> names_;   // tensor names seen
  int n_offsets_ = 0;
  int skip_depth_ = 0;
  bool seen_metadata_ = false;
};

// Checks one parsed entry against the dtype table and the data buffer size.
void validate_entry(const std::string& path, const TensorInfo& t, uint64_t data_size) {
  const std::string where = path + ": tensor " + quote_name(t.name) + ": ";
  const DtypeEntry* d = find_dtype(t.dtype);
  if (!d) {
    if (is_unsupported_dtype(t.dtype))
      throw Error(where + "dtype " + quote_name(t.dtype) + " is not supported by this program");
    throw Error(where + "unknown dtype " + quote_name(t.dtype));
  }
  // Element count with checked multiplication. Zero dims are replaced by 1 for the overflow
  // check, because LibTorch computes strides as products of max(dim, 1): a shape like
  // [0, 2^40, 2^40] has no elements but would still overflow inside torch::empty.
  uint64_t product = 1;
  bool empty = false;
  constexpr uint64_t kI64Max = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
  for (int64_t dim : t.shape) {  // dims are >= 0 (checked while parsing)
    empty = empty || dim == 0;
    uint64_t factor = std::max<uint64_t>(static_cast<uint64_t>(dim), 1);
    if (__builtin_mul_overflow(product, factor, &product) || product > kI64Max)
      throw Error(where + "shape " + shape_str(t.shape) + " has too many elements (overflow)");
  }
  const uint64_t numel = empty ? 0 : product;
  uint64_t nbytes = 0;
  if (__builtin_mul_overflow(numel, static_cast<uint64_t>(d->size), &nbytes) || nbytes > kI64Max)
    throw Error(where + "shape " + shape_str(t.shape) + " is too large (byte size overflows)");
  if (t.end < t.begin)
    throw Error(where + "data_offsets " + range_str(t) + ": end is before begin");
  if (t.end - t.begin != nbytes)
    throw Error(where + "data_offsets " + range_str(t) + " span " + std::to_string(t.end - t.begin) +
                " bytes but dtype " + t.dtype + " with shape " + shape_str(t.shape) + " needs " +
                std::to_string(nbytes) + " bytes (size mismatch)");
  if (t.end > data_size)
    throw Error(where + "data_offsets " + range_str(t) + " point beyond the end of the data buffer (" +
                std::to_string(data_size) + " bytes; file truncated?)");
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// dtype API

std::string dtype_name(c10::ScalarType t) {
  if (const DtypeEntry* d = find_dtype(t)) return d->name;
  throw Error(std::string("dtype ") + c10::toString(t) + " cannot be stored in safetensors files");
}

c10::ScalarType parse_dtype(const std::string& s) {
  if (const DtypeEntry* d = find_dtype(s)) return d->type;
  if (is_unsupported_dtype(s)) throw Error("safetensors dtype " + quote_name(s) + " is not supported");
  throw Error("unknown safetensors dtype " + quote_name(s));
}

size_t dtype_size(const std::string& s) {
  if (const DtypeEntry* d = find_dtype(s)) return d->size;
  throw Error("unknown safetensors dtype " + quote_name(s));
}

// ---------------------------------------------------------------------------------------------
// reader

SafeTensorsFile SafeTensorsFile::open(const std::string& path) {
  SafeTensorsFile f;
  f.path_ = path;

  // O_NONBLOCK: opening a FIFO (or a device) must not hang; it is refused just below as not a
  // regular file. Reads from regular files ignore the flag.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw Error(path + ": cannot open: " + errno_text());
  f.fd_ = std::shared_ptr<const int>(new int(fd), [](const int* p) {
    ::close(*p);
    delete p;
  });

  struct stat st {};
  if (::fstat(fd, &st) != 0) throw Error(path + ": cannot stat: " + errno_text());
  // The size must be known and stable to bounds-check offsets (rules out pipes, directories).
  if (!S_ISREG(st.st_mode)) throw Error(path + ": not a regular file");
  f.file_size_ = static_cast<uint64_t>(st.st_size);
  if (f.file_size_ < 8)
    throw Error(path + ": file is too short to be a safetensors file (" +
                std::to_string(f.file_size_) + " bytes, the header length alone takes 8)");

  unsigned char len_bytes[8];
  pread_exact(fd, len_bytes, 8, 0, path, "the header length");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len_bytes[i];  // little-endian
  // Both checks come before the header buffer is allocated: the length is untrusted.
  if (header_len > kMaxHeaderBytes)
    throw Error(path + ": header length " + std::to_string(header_len) + " exceeds the limit of " +
                std::to_string(kMaxHeaderBytes) + " bytes (corrupt or not a safetensors file)");
  if (header_len > f.file_size_ - 8)
    throw Error(path + ": header length " + std::to_string(header_len) +
                " is larger than the rest of the file (" + std::to_string(f.file_size_ - 8) +
                " bytes; truncated or not a safetensors file)");

  std::string header(static_cast<size_t>(header_len), '\0');
  pread_exact(fd, header.data(), header_len, 8, path, "the header");
  f.data_start_ = 8 + header_len;
  const uint64_t data_size = f.file_size_ - f.data_start_;

  HeaderParser parser;
  bool ok = false;
  try {
    // strict = true: anything but whitespace after the root object is an error (the writer's
    // padding is spaces).
    ok = nlohmann::json::sax_parse(header, &parser, nlohmann::json::input_format_t::json, true);
  } catch (const std::bad_alloc&) {
    throw Error(path + ": out of memory while parsing the header");
  } catch (const std::exception& e) {  // defensive: our handler itself never throws
    throw Error(path + ": invalid header: " + sanitized(e.what()));
  }
  if (!ok) {
    throw Error(path + ": " + (parser.error().empty() ? std::string("invalid header") : parser.error()));
  }

  for (const TensorInfo& t : parser.tensors) validate_entry(path, t, data_size);

  // Data-offset order; stable so that empty tensors sharing an offset keep the header order
  // (our writer emits the header in the caller's order, so a round trip preserves it).
  f.tensors_ = std::move(parser.tensors);
  std::stable_sort(f.tensors_.begin(), f.tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  // With the list sorted by begin and no overlap found so far, ends are non-decreasing, so
  // comparing each tensor with its predecessor finds every overlap.
  for (size_t i = 1; i < f.tensors_.size(); ++i) {
    const TensorInfo& a = f.tensors_[i - 1];
    const TensorInfo& b = f.tensors_[i];
    if (b.begin < a.end)
      throw Error(path + ": tensors " + quote_name(a.name) + " " + range_str(a) + " and " +
                  quote_name(b.name) + " " + range_str(b) + " overlap");
  }
  f.index_.reserve(f.tensors_.size());
  for (size_t i = 0; i < f.tensors_.size(); ++i) f.index_.emplace(f.tensors_[i].name, i);
  f.metadata_ = std::move(parser.metadata);
  return f;
}

bool SafeTensorsFile::contains(const std::string& name) const { return index_.count(name) != 0; }

const TensorInfo& SafeTensorsFile::info(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end())
    throw Error(path_ + ": no tensor named " + quote_name(name) + " (file has " +
                std::to_string(tensors_.size()) + " tensors)");
  return tensors_[it->second];
}

at::Tensor SafeTensorsFile::load(const std::string& name) const { return load(info(name)); }

at::Tensor SafeTensorsFile::load(const TensorInfo& info) const {
  // Everything below was validated in open(): the dtype is known, the shape cannot overflow
  // and [begin, end) lies inside the file, so the allocation is at most the file size.
  const uint64_t nbytes = info.end - info.begin;
  at::Tensor t = torch::empty(info.shape, torch::TensorOptions().dtype(parse_dtype(info.dtype)));
  if (static_cast<uint64_t>(t.nbytes()) != nbytes)  // cannot happen; guards the pread below
    throw Error(path_ + ": tensor " + quote_name(info.name) + ": internal size mismatch");
  if (nbytes == 0) return t;
  pread_exact(*fd_, t.data_ptr(), nbytes, data_start_ + info.begin, path_,
              "tensor " + quote_name(info.name));
  if (t.scalar_type() == c10::ScalarType::Bool) {
    // Any other byte value in a bool tensor is undefined behaviour in LibTorch kernels.
    const auto* p = static_cast<const uint8_t*>(t.data_ptr());
    if (std::any_of(p, p + nbytes, [](uint8_t b) { return b > 1; }))
      throw Error(path_ + ": tensor " + quote_name(info.name) +
                  ": BOOL data contains byte values other than 0 and 1");
  }
  return t;
}

std::vector<std::pair<std::string, at::Tensor>> SafeTensorsFile::load_all() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  out.reserve(tensors_.size());
  for (const TensorInfo& t : tensors_) out.emplace_back(t.name, load(t));
  return out;
}

// ---------------------------------------------------------------------------------------------
// writer

void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  // Build and validate the whole header before touching the file system, so that a bad
  // argument never leaves a partial or temporary file behind. ordered_json keeps insertion
  // order: "__metadata__" first, then the tensors in the caller's order.
  // Files this reader would refuse are not written in the first place.
  if (metadata.size() > kMaxMetadataEntries)
    throw Error(path + ": more than " + std::to_string(kMaxMetadataEntries) + " metadata entries");
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = std::move(meta);
  }
  std::vector<uint64_t> sizes;
  sizes.reserve(tensors.size());
  uint64_t offset = 0;
  std::unordered_set<std::string> seen;
  for (const auto& [name, t] : tensors) {
    const std::string where = path + ": tensor " + quote_name(name) + ": ";
    if (name == "__metadata__") throw Error(where + "the name is reserved by the format");
    if (!seen.insert(name).second) throw Error(path + ": duplicate tensor name " + quote_name(name));
    if (!t.defined()) throw Error(where + "tensor is undefined");
    if (t.layout() != c10::kStrided) throw Error(where + "only dense (strided) tensors can be saved");
    if (static_cast<size_t>(t.dim()) > kMaxRank)
      throw Error(where + "more than " + std::to_string(kMaxRank) + " dimensions");
    const DtypeEntry* d = find_dtype(t.scalar_type());
    if (!d)
      throw Error(where + "dtype " + c10::toString(t.scalar_type()) +
                  " cannot be stored in safetensors files");
    const uint64_t nbytes = static_cast<uint64_t>(t.numel()) * d->size;
    nlohmann::ordered_json entry = nlohmann::ordered_json::object();
    entry["dtype"] = d->name;
    entry["shape"] = nlohmann::ordered_json::array();
    for (int64_t dim : t.sizes()) entry["shape"].push_back(dim);
    entry["data_offsets"] = nlohmann::ordered_json::array({offset, offset + nbytes});
    header[name] = std::move(entry);
    sizes.push_back(nbytes);
    offset += nbytes;
  }

  std::string text;
  try {
    text = header.dump();  // compact; throws on strings that are not valid UTF-8
  } catch (const nlohmann::json::exception& e) {
    throw Error(path + ": cannot encode header (tensor names and metadata must be valid UTF-8): " +
                sanitized(e.what()));
  }
  // Pad with spaces (valid JSON whitespace) so the data buffer starts 8-byte aligned, like the
  // reference writer; lets readers mmap the file and use the data in place.
  text.append((8 - text.size() % 8) % 8, ' ');
  if (text.size() > kMaxHeaderBytes)
    throw Error(path + ": header would be " + std::to_string(text.size()) +
                " bytes, more than readers accept (" + std::to_string(kMaxHeaderBytes) + ")");

  atomic_write_file(path, [&](std::FILE* f) {
    auto write = [&](const void* p, size_t n) {
      if (n != 0 && std::fwrite(p, 1, n, f) != n)
        throw std::runtime_error(std::string("fwrite failed: ") + errno_text());
    };
    unsigned char len_bytes[8];
    uint64_t n = text.size();
    for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<unsigned char>(n >> (8 * i));
    write(len_bytes, 8);
    write(text.data(), text.size());
    for (size_t i = 0; i < tensors.size(); ++i) {
      // One tensor at a time, so saving a GPU model needs CPU memory for one tensor only.
      // resolve_neg() materializes a lazily negated view; contiguous() gives row-major bytes.
      at::Tensor c = tensors[i].second.detach().to(c10::kCPU).resolve_neg().contiguous();
      if (static_cast<uint64_t>(c.nbytes()) != sizes[i])
        throw std::runtime_error("tensor " + quote_name(tensors[i].first) + " changed size while saving");
      write(c.data_ptr(), sizes[i]);
    }
  });
}

}  // namespace hd::io
