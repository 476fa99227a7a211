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

// A JPEG's size and colour space, from its header alone.
struct JpegInfo {
  int64_t width = 0, height = 0;
  bool cmyk = false;  // CMYK or YCCK: decode_jpeg_region cannot give RGB, decode_image can
};

// True (and info filled) if `data` is a JPEG by its signature, false for any other format.
// Throws hd::Error naming `source` if the JPEG header is invalid or the image too large.
bool read_jpeg_info(const uint8_t* data, size_t size, const std::string& source, JpegInfo& info);

// Size of one side of a JPEG decoded at libjpeg's reduced scale scale_num/8: ceil(side*num/8).
int64_t jpeg_scaled_size(int64_t side, int scale_num);

// Part of a JPEG decoded at the scale scale_num/8 (1..8; 8 = full size). libjpeg's DCT scaling
// computes the reduced image in the frequency domain, much faster than decoding at full size and
// resizing; rows above y0 skip the inverse DCT, colour conversion and upsampling, and columns
// outside [x0, x1) are not reconstructed at all (libjpeg-turbo's jpeg_skip_scanlines /
// jpeg_crop_scanline). Coordinates are in the scaled image. Pixels are those of decode_image at
// scale 8 (same DCT, same fancy upsampling). Rows below the window are not decoded when the file
// ends with the EOI marker (FF D9, which a file truncated inside its image data cannot end
// with); otherwise their entropy-coded data is read, so that a truncated JPEG fails here as in
// decode_image whatever the window.
struct ImageRegion {
  torch::Tensor hwc;                          // uint8 [y1 - y0, x1 - x0, 3], RGB (rows may be strided)
  int64_t top = 0, left = 0;                  // y0, x0: where hwc[0][0] lies in the scaled image
  int64_t image_height = 0, image_width = 0;  // the scaled image's size
};
// Throws hd::Error naming `source` for an invalid, truncated or CMYK JPEG or a bad window.
ImageRegion decode_jpeg_region(const uint8_t* data, size_t size, const std::string& source, int scale_num,
                               int64_t y0, int64_t y1, int64_t x0, int64_t x1);
// The same into `buffer` (grown as needed; reusing one avoids an allocation per image): the
// region's hwc is a view of it, valid until the buffer is next used or freed.
ImageRegion decode_jpeg_region(const uint8_t* data, size_t size, const std::string& source, int scale_num,
                               int64_t y0, int64_t y1, int64_t x0, int64_t x1, std::vector<uint8_t>& buffer);

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
