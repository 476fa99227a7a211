// WebDataset tar shards as a data set: the layout the `webdataset` library and timm write, each
// sample consecutive tar members sharing a key, <key>.jpg|jpeg|png (the image) and <key>.cls
// (its class index as ASCII text). Other members of a sample (.json, .txt, ...) are ignored.
//
// Reading: opening a set of shards walks their tar headers once (member data is skipped; only
// .cls labels and the first bytes of each image are read), building an index of ~40 bytes per
// sample; images are then read from their shard at load time, one member per read, so memory is
// bounded by the index and the loader's batches in flight, never by a shard or a data set.
//
// Order: a shuffled epoch visits the shards in a (seed, epoch) order and shuffles their samples
// through a buffer of `buffer` samples (webdataset's shuffle(buffer)), so reads move forward
// through each shard. The DataLoader then splits that order across data-parallel ranks (rank r
// takes positions r, r+W, ...) and builds its batches in parallel without duplicates, and resumes
// at a batch of it, as for any data set. buffer = 0 gives the uniform permutation every other
// data set uses (for shards on local storage; the same images in the same order as the folder
// they were made from).
//
// Classes: classes.txt (one name per line) next to the first shard, as write_shards() leaves it,
// names the classes and bounds the labels; without it the classes are "0" .. max label.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "io/tar.h"

namespace hd::data {

constexpr int64_t kDefaultShuffleBuffer = 1000;
// Labels must lie below this without a classes.txt (a corrupt label must not allocate classes).
constexpr int64_t kMaxShardClasses = int64_t{1} << 20;

// The shard files of a spec (without "wds:"), "{split}" replaced by `split` first:
//   - brace patterns: "train-{000000..000146}.tar" (a numeric range, zero-padded to the width
//     of its bounds) or "{a,b,c}", several groups allowed;
//   - a list file "shards.txt": one shard (or pattern) per line, relative to the list's folder,
//     blank lines and '#' comments ignored;
//   - glob patterns ("*", "?", "[...]"), sorted;
//   - a trailing "#buffer=N" sets the shuffle buffer (see above; default kDefaultShuffleBuffer).
// Throws hd::Error naming the spec for a malformed pattern, a shard that does not exist or an
// empty expansion.
struct ShardSpec {
  std::vector<std::string> shards;
  int64_t buffer = kDefaultShuffleBuffer;
};
ShardSpec expand_shard_spec(const std::string& spec, const std::string& split);

// One sample of a shard, as found by scan_shard().
struct ShardSample {
  std::string member;  // the image member's name
  uint64_t offset = 0, size = 0;
  int64_t label = 0;
};

struct ShardScan {
  std::vector<ShardSample> samples;
  int64_t skipped = 0;  // bad samples dropped (skip_bad)
  bool truncated = false;
  std::vector<std::string> problems;  // what was skipped, the first few
};

// Groups the members of one tar archive into samples and checks them. Every problem is an
// hd::Error naming the shard and the member: a truncated or corrupt archive, a sample without an
// image member, an image member without its .cls, an image member that is not a JPEG or PNG (by
// signature) or larger than kMaxImageFileBytes, a label that is not an integer or lies outside
// [0, num_classes) (num_classes <= 0: [0, kMaxShardClasses)). With skip_bad these samples are
// dropped and counted instead, and a damaged archive keeps the samples before the damage.
ShardScan scan_shard(const std::string& shard, uint64_t size, const io::TarReader::ReadAt& read_at,
                     int64_t num_classes, bool skip_bad);

// Opens the shards of `spec` (see expand_shard_spec) as a random-access Dataset whose
// source(i) is "shard.tar#member".
std::shared_ptr<Dataset> open_webdataset(const std::string& spec, const std::string& split, bool skip_bad = false);

// The shuffled order described above over shards of the given sample counts (samples numbered
// shard after shard): shards in a (seed, epoch) permutation, then a buffer shuffle.
std::vector<int64_t> shard_buffer_order(const std::vector<int64_t>& shard_sizes, int64_t buffer, uint64_t seed,
                                        int64_t epoch);

// Writes `ds` as DIR/PREFIX-000000.tar, ... of `per_shard` samples each, in index order, keys
// "%08d" of the sample index: the image file's own bytes where source(i) is an existing .jpg /
// .jpeg / .png file (an image folder), a lossless PNG of image(i) otherwise; labels as decimal
// text. Also writes DIR/classes.txt. Each shard is written atomically. Returns the spec that
// reads them back ("DIR/PREFIX-{000000..000009}.tar").
std::string write_shards(const Dataset& ds, const std::string& dir, const std::string& prefix, int64_t per_shard);

}  // namespace hd::data
