// JPEG / PNG decoding (and encoding, for tests, benchmarks and tools) to / from uint8 [C,H,W].
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <torch/types.h>

namespace hd::data {

// Images with more pixels than this are refused before allocating (a corrupt or hostile header
// could otherwise ask for many GiB). Same order of magnitude as PIL's decompression-bomb limit.
constexpr int64_t kMaxImagePixels = int64_t{1} << 27;  // 134 M pixels, ~400 MB as RGB
// Image files larger than this are refused before they are read into memory.
constexpr uint64_t kMaxImageFileBytes = uint64_t{1} << 30;  // 1 GiB

// Decodes a JPEG or PNG held in memory to uint8 [3,H,W] (RGB), contiguous. The format is taken
// from the file signature, not the name (data sets contain PNGs named .jpg and vice versa).
//   - Grayscale sources are expanded to RGB; an alpha channel is dropped (not composited), which
//     is what PIL's Image.convert("RGB") does, i.e. what torchvision/timm pipelines see.
//   - JPEG uses libjpeg-turbo's default (accurate integer) DCT and fancy upsampling, like PIL.
//     Recoverable libjpeg warnings (e.g. extraneous bytes) are tolerated, but a truncated JPEG
//     ("Premature end of JPEG file") is an error: libjpeg would silently fill the rest with gray.
//   - 16-bit PNGs without colour-space information are taken as sRGB-encoded (value / 257).
//   - Sizes are checked before anything is allocated: more than kMaxImagePixels pixels, or a PNG
//     announcing more pixel data than its compressed stream can possibly hold, are refused.
// Throws hd::Error whose message starts with `source` (the path) on any failure.
torch::Tensor decode_image(const uint8_t* data, size_t size, const std::string& source);

// Reads a whole file; throws hd::Error naming it on failure or if it exceeds kMaxImageFileBytes.
std::vector<uint8_t> read_file_bytes(const std::string& path);

// Reads and decodes an image file (see decode_image).
torch::Tensor load_image(const std::string& path);

// Encodes uint8 [C,H,W] (C = 1 or 3) as JPEG (TurboJPEG tjCompress2, 4:2:0 chroma subsampling
// for colour) or PNG (libpng simplified API). Throws hd::Error on failure.
std::vector<uint8_t> encode_jpeg(const torch::Tensor& u8_chw, int quality = 90);
std::vector<uint8_t> encode_png(const torch::Tensor& u8_chw);

// Writes bytes to a file (not atomically: meant for test fixtures and synthetic data).
void write_file_bytes(const std::string& path, const std::vector<uint8_t>& bytes);

}  // namespace hd::data
