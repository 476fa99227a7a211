// Grouping the members of a tar shard into samples and checking them (see webdataset.h); apart
// from the data set so that the fuzzer exercises exactly this parser.
#include <algorithm>
#include <cctype>

#include "data/image_codec.h"
#include "data/webdataset.h"
#include "util/error.h"

namespace hd::data {

namespace {

constexpr size_t kProblemsKept = 10;

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// webdataset's split of a member name: the key is the path up to the first '.' of the file
// name, the extension what follows ("a/b.seg.png" -> "a/b", "seg.png").
std::pair<std::string, std::string> key_and_extension(const std::string& name) {
  const auto slash = name.rfind('/');
  const auto dot = name.find('.', slash == std::string::npos ? 0 : slash + 1);
  if (dot == std::string::npos) return {name, ""};
  return {name.substr(0, dot), name.substr(dot + 1)};
}

bool is_image_extension(const std::string& ext) { return ext == "jpg" || ext == "jpeg" || ext == "png"; }

}  // namespace

ShardScan scan_shard(const std::string& shard, uint64_t size, const io::TarReader::ReadAt& read_at,
                     int64_t num_classes, bool skip_bad) {
  ShardScan scan;
  auto bad = [&](const std::string& what) {
    const std::string msg = shard + ": " + what;
    if (!skip_bad) throw Error(msg);
    ++scan.skipped;
    if (scan.problems.size() < kProblemsKept) scan.problems.push_back(msg);
  };
  const int64_t max_label = num_classes > 0 ? num_classes : kMaxShardClasses;

  std::string key;
  std::vector<std::pair<std::string, io::TarMember>> group;  // (extension, member)
  auto flush = [&] {
    if (group.empty()) return;
    const io::TarMember* img = nullptr;
    const io::TarMember* cls = nullptr;
    for (auto& [ext, m] : group) {
      if (!img && is_image_extension(ext)) img = &m;
      if (!cls && ext == "cls") cls = &m;
    }
    std::vector<std::pair<std::string, io::TarMember>> members = std::move(group);
    group.clear();
    if (!img) {
      std::string names;
      for (size_t i = 0; i < members.size() && i < 4; ++i) names += (i ? ", '" : "'") + members[i].second.name + "'";
      return bad("sample '" + key + "' has no .jpg/.jpeg/.png member (members: " + names + ")");
    }
    if (!cls) return bad("member '" + img->name + "' has no label (no '" + key + ".cls' member)");
    if (img->size > kMaxImageFileBytes)
      return bad("member '" + img->name + "' has " + std::to_string(img->size) + " bytes, more than an image may have");
    uint8_t sig[4] = {};
    if (img->size >= 4) read_at(img->offset, sig, 4);
    const bool jpeg = sig[0] == 0xFF && sig[1] == 0xD8 && sig[2] == 0xFF;
    const bool png = sig[0] == 0x89 && sig[1] == 'P' && sig[2] == 'N' && sig[3] == 'G';
    if (!jpeg && !png) return bad("member '" + img->name + "' is not a JPEG or PNG image");
    if (cls->size > 64) return bad("member '" + cls->name + "': " + std::to_string(cls->size) + " bytes is no class label");
    std::string text(cls->size, '\0');
    if (cls->size) read_at(cls->offset, text.data(), text.size());
    const auto b = text.find_first_not_of(" \t\r\n"), e = text.find_last_not_of(" \t\r\n");
    const std::string t = b == std::string::npos ? "" : text.substr(b, e - b + 1);
    const bool digits = !t.empty() && t.size() <= 18 &&
                        t.find_first_not_of("0123456789", t[0] == '-' ? 1 : 0) == std::string::npos && t != "-";
    std::string shown;
    for (char c : t.substr(0, 20)) shown += (c >= 32 && c < 127) ? c : '?';
    if (!digits) return bad("member '" + cls->name + "': label '" + shown + "' is not an integer");
    const int64_t label = std::stoll(t);
    if (label < 0 || label >= max_label)
      return bad("member '" + cls->name + "': label " + t + " out of range [0, " + std::to_string(max_label) + ")" +
                 (num_classes > 0 ? " (classes.txt)" : " (no classes.txt next to the shards)"));
    scan.samples.push_back({img->name, img->offset, img->size, label});
  };

  io::TarReader reader(shard, size, read_at);
  try {
    io::TarMember m;
    while (reader.next(m)) {
      auto [k, ext] = key_and_extension(m.name);
      if (k != key) {
        flush();
        key = k;
      }
      group.emplace_back(lower(ext), m);
    }
    flush();
  } catch (const Error& e) {
    // A damaged archive (the reader's message names the shard, the offset and the member); bad
    // samples never get here with skip_bad, they are counted by bad().
    if (!skip_bad) throw;
    scan.truncated = true;
    if (scan.problems.size() < kProblemsKept) scan.problems.push_back(e.what());
    // The members read before the damage are whole; a sample they leave incomplete (its label
    // came after the damage) is counted as bad like any other.
    flush();
  }
  return scan;
}

}  // namespace hd::data
