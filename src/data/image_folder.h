// An image-classification folder: root/<class>/<images>, as torchvision's ImageFolder.
#pragma once

#include <memory>
#include <string>

#include "data/dataset.h"

namespace hd::data {

// Opens root/<class>/... :
//   - classes are the sorted (byte-wise) names of root's subfolders; label = position in that list;
//   - each class folder is searched recursively (symlinks followed) for files ending in .jpg,
//     .jpeg or .png (case-insensitive); other files are ignored; samples are sorted by path;
//   - hidden entries (names starting with '.', e.g. ".ipynb_checkpoints", macOS "._x.jpg"
//     resource forks) are skipped, unlike torchvision, because they are never images of a class.
// Only the file list is built here; image(i) reads and decodes lazily (see decode_image) and is
// safe to call from several threads.
// Throws hd::Error naming the folder if root is missing, has no class subfolders, or a class
// folder contains no image.
std::shared_ptr<Dataset> open_image_folder(const std::string& root);

}  // namespace hd::data
