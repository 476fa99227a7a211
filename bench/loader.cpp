// Data-loader throughput (images/s):
//   - Fashion-MNIST (if installed), train transform at 28x28, batch 256;
//   - a synthetic ImageFolder of 500x375 JPEGs (ImageNet's typical size) written to /tmp, train
//     transform (decode, RandomResizedCrop 224, flip, normalise) and eval transform at 224:
//       one-step decode + transform (decode_transform.h) with DCT scaling, without it, and the
//       generic path (full decode, then transform_image), with 1 and 2 workers;
//   - the same JPEGs as WebDataset tar shards (train transform, shard-wise shuffle);
//   - torchvision's ImageFolder + DataLoader with the same transform (bench/loader_torchvision.py,
//     /usr/bin/python3), 1 and 2 workers, and the per-core ratio (1 worker each).
// The consumer does nothing but take batches, so this is the loader's ceiling on this machine.
// Each row is the best of 3 timed epochs.
//
// Usage: bench_loader [max_batches_fashion_mnist=100] [jpeg_images=320] [--no-python]
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <torch/torch.h>

#include "data/idx.h"
#include "data/image_codec.h"
#include "data/image_folder.h"
#include "data/loader.h"
#include "data/webdataset.h"
#include "util/subprocess.h"
#include "util/timer.h"

using namespace hd::data;

namespace {

// A folder of `n` 500x375 JPEGs in 8 classes with photo-like content (smooth colour fields,
// edges, texture; quality 90, 4:2:0), about the size and entropy of an ImageNet photo.
std::string make_jpeg_folder(int n) {
  namespace fs = std::filesystem;
  const std::string root = "/tmp/hd_bench_loader_jpeg500_" + std::to_string(n);
  if (fs::exists(root + "/.complete")) return root;
  fs::remove_all(root);
  torch::manual_seed(0);
  const int64_t h = 375, w = 500;
  for (int i = 0; i < n; ++i) {
    const std::string cls = root + "/class" + std::to_string(i % 8);
    fs::create_directories(cls);
    auto y = torch::linspace(0, 1, h).view({1, -1, 1});
    auto x = torch::linspace(0, 1, w).view({1, 1, -1});
    auto c = torch::rand({3, 1, 1}) * 6.0;
    auto edge = ((x * (1 + i % 3) + y * (2 - i % 2)) > 1.1).to(torch::kFloat) * 50;
    auto img = 110 + 80 * torch::sin(x * (3 + i % 5) * 2 + c) * torch::cos(y * (2 + i % 7) * 2 - c) + edge +
               torch::randn({3, h, w}) * 10;
    write_file_bytes(cls + "/img" + std::to_string(i) + ".jpg",
                     encode_jpeg(img.round().clamp(0, 255).to(torch::kUInt8).contiguous(), 90));
  }
  write_file_bytes(root + "/.complete", {});
  return root;
}

// The same data set with its encoded files hidden, so that the loader takes the generic path
// (decode_image, then transform_image): the reference the one-step path is measured against.
class DecodedOnly : public Dataset {
 public:
  explicit DecodedOnly(std::shared_ptr<Dataset> inner) : inner_(std::move(inner)) {}
  size_t size() const override { return inner_->size(); }
  int64_t label(size_t i) const override { return inner_->label(i); }
  torch::Tensor image(size_t i) const override { return inner_->image(i); }
  std::string source(size_t i) const override { return inner_->source(i); }
  std::vector<std::string> class_names() const override { return inner_->class_names(); }
  std::string name() const override { return inner_->name(); }

 private:
  std::shared_ptr<Dataset> inner_;
};

// torchvision's pipeline on the same folder (bench/loader_torchvision.py); null if it failed.
nlohmann::json run_torchvision(const std::string& root, int workers) {
  const std::string script = (std::filesystem::path(__FILE__).parent_path() / "loader_torchvision.py").string();
  return hd::json_result_of("/usr/bin/python3 '" + script + "' --root '" + root + "' --workers " + std::to_string(workers),
                            "torchvision reference");
}

struct Result {
  int64_t batches = 0, images = 0;
  double seconds = 0;
};

// Best of `repeats` timed epochs (or epoch prefixes of max_batches): on a shared machine the
// fastest run is the one least disturbed by other processes.
Result run(const std::shared_ptr<Dataset>& ds, LoaderConfig cfg, int64_t max_batches, int repeats = 3) {
  DataLoader loader(ds, cfg);
  // Warm-up epoch slice: page cache, allocator, thread start-up are not what we measure.
  loader.start_epoch(0);
  Batch b;
  for (int i = 0; i < 2 && loader.next(b); ++i) {
  }
  Result best;
  for (int rep = 0; rep < repeats; ++rep) {
    Result r;
    hd::Timer timer;
    loader.start_epoch(1 + rep);
    while (r.batches < max_batches && loader.next(b)) {
      ++r.batches;
      r.images += b.images.size(0);
    }
    r.seconds = timer.seconds();
    if (rep == 0 || r.images / r.seconds > best.images / best.seconds) best = r;
  }
  return best;
}

double rate(const Result& r) { return r.images / r.seconds; }

void row(const char* name, int64_t size, const char* mode, int64_t batch, int workers, const Result& r) {
  std::printf("%-34s %5ld  %-5s %6ld %8d %8ld %8ld %9.2f %10.0f\n", name, static_cast<long>(size), mode,
              static_cast<long>(batch), workers, static_cast<long>(r.batches), static_cast<long>(r.images), r.seconds,
              rate(r));
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::vector<std::string> args;
    bool python = true;
    for (int i = 1; i < argc; ++i) {
      if (std::strcmp(argv[i], "--no-python") == 0)
        python = false;
      else
        args.emplace_back(argv[i]);
    }
    const int64_t fm_batches = args.size() > 0 ? std::stoll(args[0]) : 100;
    const int jpeg_images = args.size() > 1 ? std::stoi(args[1]) : 320;
    std::printf("%-34s %5s  %-5s %6s %8s %8s %8s %9s %10s\n", "dataset", "size", "mode", "batch", "workers", "batches",
                "images", "seconds", "images/s");

    if (std::filesystem::exists(std::string(kDefaultFashionMnistDir) + "/train-images-idx3-ubyte.gz")) {
      auto fm = open_fashion_mnist(kDefaultFashionMnistDir, "train");
      for (int workers : {1, 2}) {
        LoaderConfig cfg;
        cfg.batch_size = 256;
        cfg.num_workers = workers;
        cfg.transform.train = true;
        cfg.transform.size = 28;
        cfg.transform.channels = 1;
        cfg.transform.mean = {0.2860};
        cfg.transform.std = {0.3530};
        row("fashion-mnist/train", 28, "train", 256, workers, run(fm, cfg, fm_batches));
      }
    } else {
      std::printf("(Fashion-MNIST not installed: skipped)\n");
    }

    // The 500x375 JPEG rows: batch 32, every image.
    auto jpeg_config = [](int workers, bool train, bool dct_scaling = true) {
      LoaderConfig cfg;
      cfg.batch_size = 32;
      cfg.num_workers = workers;
      cfg.drop_last = false;
      cfg.transform.train = train;
      cfg.transform.size = 224;
      cfg.transform.jpeg_dct_scaling = dct_scaling;
      return cfg;
    };
    const std::string root = make_jpeg_folder(jpeg_images);
    auto folder = open_image_folder(root);
    {
      uintmax_t bytes = 0;
      for (const auto& e : std::filesystem::recursive_directory_iterator(root))
        if (e.is_regular_file()) bytes += e.file_size();
      std::printf("(%zu JPEGs of 500x375, quality 90, 4:2:0, %.0f KB each on average)\n", folder->size(),
                  static_cast<double>(bytes) / 1024.0 / static_cast<double>(folder->size()));
    }
    auto generic = std::make_shared<DecodedOnly>(folder);
    Result fast1;
    for (int workers : {1, 2}) {
      const Result r = run(folder, jpeg_config(workers, true), 1 << 30);
      if (workers == 1) fast1 = r;
      row("jpeg-folder 500x375 one-step", 224, "train", 32, workers, r);
      row("jpeg-folder 500x375 one-step exact", 224, "train", 32, workers,
          run(folder, jpeg_config(workers, true, false), 1 << 30));
      row("jpeg-folder 500x375 generic", 224, "train", 32, workers, run(generic, jpeg_config(workers, true), 1 << 30));
    }
    for (int workers : {1, 2}) {
      row("jpeg-folder 500x375 one-step", 224, "eval", 32, workers, run(folder, jpeg_config(workers, false), 1 << 30));
      row("jpeg-folder 500x375 generic", 224, "eval", 32, workers, run(generic, jpeg_config(workers, false), 1 << 30));
    }
    const std::string spec = write_shards(*folder, "/tmp/hd_bench_loader_wds500_" + std::to_string(jpeg_images), "train", 100);
    auto shards = open_webdataset(spec, "train");
    for (int workers : {1, 2})
      row("jpeg-shards 500x375 one-step", 224, "train", 32, workers, run(shards, jpeg_config(workers, true), 1 << 30));

    if (python) {
      double tv1 = 0;
      for (int workers : {1, 2}) {
        const nlohmann::json r = run_torchvision(root, workers);
        if (r.is_null()) {
          std::printf("(torchvision reference unavailable: /usr/bin/python3 with torch and torchvision is needed)\n");
          break;
        }
        Result t;
        t.images = r["images"].get<int64_t>();
        t.batches = (t.images + 31) / 32;
        t.seconds = r["seconds"].get<double>();
        if (workers == 1) tv1 = rate(t);
        row("torchvision ImageFolder+DataLoader", 224, "train", 32, workers, t);
        if (workers == 1)
          std::printf("(torch %s, torchvision %s, PIL %s)\n", r["torch"].get<std::string>().c_str(),
                      r["torchvision"].get<std::string>().c_str(), r["pil"].get<std::string>().c_str());
      }
      if (tv1 > 0)
        std::printf("per core (1 worker each), train transform on 500x375 JPEGs: one-step %.0f images/s, torchvision %.0f: %.2fx\n",
                    rate(fast1), tv1, rate(fast1) / tv1);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_loader: %s\n", e.what());
    return 1;
  }
  return 0;
}
