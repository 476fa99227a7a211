#include "data/image_folder.h"

#include <algorithm>
#include <cctype>
#include <filesystem>

#include <torch/torch.h>

#include "data/image_codec.h"
#include "util/error.h"

namespace hd::data {

namespace {

namespace fs = std::filesystem;

bool is_hidden(const fs::path& p) {
  const std::string name = p.filename().string();
  return !name.empty() && name[0] == '.';
}

bool has_image_extension(const fs::path& p) {
  std::string ext = p.extension().string();
  for (auto& c : ext) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return ext == ".jpg" || ext == ".jpeg" || ext == ".png";
}

class ImageFolderDataset final : public Dataset {
 public:
  ImageFolderDataset(std::string root, std::vector<std::string> classes, std::vector<std::string> files,
                     std::vector<int64_t> labels)
      : root_(std::move(root)), classes_(std::move(classes)), files_(std::move(files)), labels_(std::move(labels)) {}

  size_t size() const override { return files_.size(); }

  int64_t label(size_t i) const override {
    check_index(i);
    return labels_[i];
  }

  torch::Tensor image(size_t i) const override {
    check_index(i);
    return load_image(path(i));
  }

  std::optional<std::vector<uint8_t>> encoded(size_t i) const override {
    check_index(i);
    return read_file_bytes(path(i));
  }

  std::string source(size_t i) const override {
    check_index(i);
    return path(i);
  }

  std::vector<std::string> class_names() const override { return classes_; }
  std::string name() const override { return "image-folder:" + root_; }

 private:
  std::string path(size_t i) const { return (fs::path(root_) / files_[i]).string(); }

  void check_index(size_t i) const {
    if (i >= files_.size())
      throw Error(root_ + ": sample index " + std::to_string(i) + " out of range (size " +
                  std::to_string(files_.size()) + ")");
  }

  std::string root_;
  std::vector<std::string> classes_;
  // Paths relative to root_: for ImageNet-sized folders (1.3 M files) this halves the memory of
  // the file list compared with absolute paths.
  std::vector<std::string> files_;
  std::vector<int64_t> labels_;
};

}  // namespace

std::shared_ptr<Dataset> open_image_folder(const std::string& root) {
  std::error_code ec;
  if (!fs::is_directory(root, ec)) throw Error(root + ": image folder not found (or not a directory)");

  std::vector<std::string> classes;
  std::vector<std::string> files;
  std::vector<int64_t> labels;
  try {
    for (const auto& entry : fs::directory_iterator(root)) {
      if (entry.is_directory() && !is_hidden(entry.path())) classes.push_back(entry.path().filename().string());
    }
    if (classes.empty())
      throw Error(root + ": no class subfolders (expected " + root + "/<class>/<image files>)");
    std::sort(classes.begin(), classes.end());

    const auto options = fs::directory_options::follow_directory_symlink | fs::directory_options::skip_permission_denied;
    for (size_t c = 0; c < classes.size(); ++c) {
      const fs::path class_dir = fs::path(root) / classes[c];
      std::vector<std::string> found;
      for (auto it = fs::recursive_directory_iterator(class_dir, options); it != fs::recursive_directory_iterator(); ++it) {
        if (is_hidden(it->path())) {
          if (it->is_directory()) it.disable_recursion_pending();
          continue;
        }
        if (it->is_regular_file() && has_image_extension(it->path()))
          found.push_back(it->path().lexically_relative(root).string());  // lexical: no stat per file
      }
      if (found.empty())
        throw Error(class_dir.string() + ": class folder contains no .jpg/.jpeg/.png image");
      // Sorting makes the sample order (hence labels, shuffles and checkpoints) independent of
      // the file system's directory order.
      std::sort(found.begin(), found.end());
      for (auto& f : found) {
        files.push_back(std::move(f));
        labels.push_back(static_cast<int64_t>(c));
      }
    }
  } catch (const fs::filesystem_error& e) {
    throw Error((e.path1().empty() ? root : e.path1().string()) + ": cannot list folder: " + e.code().message());
  }
  return std::make_shared<ImageFolderDataset>(root, std::move(classes), std::move(files), std::move(labels));
}

}  // namespace hd::data
