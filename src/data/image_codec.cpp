#include "data/image_codec.h"

#include <fcntl.h>
#include <png.h>
#include <sys/stat.h>
#include <turbojpeg.h>
#include <unistd.h>

// jpeglib.h needs FILE and size_t declared first.
#include <cstddef>
#include <cstdio>
#include <jerror.h>
#include <jpeglib.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <csetjmp>
#include <cstring>
#include <limits>
#include <memory>

#include <torch/torch.h>

#include "util/error.h"
#include "util/format.h"

namespace hd::data {

namespace {

struct TjDeleter {
  void operator()(void* h) const {
    if (h) tjDestroy(h);
  }
};
using TjHandle = std::unique_ptr<void, TjDeleter>;

// TurboJPEG handles are not thread-safe but are relatively costly to create (they allocate the
// libjpeg state); one per thread serves every image that thread decodes.
TjHandle& thread_decompressor_slot() {
  thread_local TjHandle handle;
  return handle;
}

tjhandle thread_decompressor() {
  TjHandle& handle = thread_decompressor_slot();
  if (!handle) handle.reset(tjInitDecompress());
  if (!handle) throw Error(std::string("TurboJPEG: cannot create a decompressor: ") + tjGetErrorStr2(nullptr));
  return handle.get();
}

// After a failure libjpeg-turbo 2.x can leave the handle mid-header (tjDecompressHeader3 returns
// without aborting the decompressor), and the next, valid, image then fails with a stale error.
// A failed handle is therefore discarded; the message must be read before.
[[noreturn]] void fail_and_discard_decompressor(const std::string& message) {
  thread_decompressor_slot().reset();
  throw Error(message);
}

bool has_prefix(const uint8_t* data, size_t size, const unsigned char* sig, size_t n) {
  return size >= n && std::memcmp(data, sig, n) == 0;
}

// File signatures: the format is taken from these, never from the name.
const unsigned char kJpegSignature[] = {0xFF, 0xD8, 0xFF};
const unsigned char kPngSignature[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
bool is_jpeg(const uint8_t* data, size_t size) { return has_prefix(data, size, kJpegSignature, sizeof(kJpegSignature)); }
bool is_png(const uint8_t* data, size_t size) { return has_prefix(data, size, kPngSignature, sizeof(kPngSignature)); }

bool contains_ci(std::string haystack, std::string needle) {
  for (auto& c : haystack) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (auto& c : needle) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return haystack.find(needle) != std::string::npos;
}

void check_dims(int64_t w, int64_t h, const std::string& source, const char* kind) {
  if (w <= 0 || h <= 0) throw Error(source + ": invalid " + kind + " dimensions " + std::to_string(w) + "x" + std::to_string(h));
  if (w * h > kMaxImagePixels)
    throw Error(source + ": " + kind + " of " + std::to_string(w) + "x" + std::to_string(h) + " pixels exceeds the limit of " +
                std::to_string(kMaxImagePixels) + " pixels");
}

// ---- libjpeg API (region decoding) ----------------------------------------------------------
// libjpeg reports fatal errors through error_exit, which must not return: it longjmps back to
// the setjmp in run_region_decode. Everything that function touches lives in RegionJob (memory,
// not registers), and it owns no C++ object with a destructor, so the jump skips nothing.
struct RegionJob {
  jpeg_error_mgr err;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
  bool premature_eof;
  // request
  const uint8_t* data;
  size_t size;
  int scale_num;
  JDIMENSION y0, y1, x0, x1;
  bool header_only;
  bool ends_with_eoi;
  // result
  int image_width, image_height, scaled_width, scaled_height;
  bool cmyk;
  JDIMENSION left, cols;
  uint8_t* pixels;  // the caller's buffer: rows (y1 - y0) x cols x 3, then one scratch row
  size_t capacity;
  const char* bad_request;
};

void region_error_exit(j_common_ptr cinfo) {
  auto* job = reinterpret_cast<RegionJob*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, job->message);
  std::longjmp(job->jump, 1);
}

void region_emit_message(j_common_ptr cinfo, int level) {
  // Warnings (level -1) are tolerated like TurboJPEG does, except the end-of-data one: libjpeg
  // would pad the missing rows with gray (see decode_jpeg).
  if (level < 0 && (cinfo->err->msg_code == JWRN_JPEG_EOF || cinfo->err->msg_code == JWRN_HIT_MARKER))
    reinterpret_cast<RegionJob*>(cinfo->err)->premature_eof = true;
  if (level < 0) ++cinfo->err->num_warnings;
}

// Returns 0 on success, 1 on a libjpeg error (job->message), 2 on a bad request (job->bad_request).
int run_region_decode(RegionJob* job) {
  jpeg_decompress_struct cinfo;
  cinfo.err = jpeg_std_error(&job->err);
  job->err.error_exit = region_error_exit;
  job->err.emit_message = region_emit_message;
  if (setjmp(job->jump)) {
    jpeg_destroy_decompress(&cinfo);
    return 1;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, job->data, static_cast<unsigned long>(job->size));
  jpeg_read_header(&cinfo, TRUE);
  job->image_width = static_cast<int>(cinfo.image_width);
  job->image_height = static_cast<int>(cinfo.image_height);
  job->cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
  if (job->header_only || job->cmyk) {
    jpeg_destroy_decompress(&cinfo);
    return 0;
  }
  cinfo.out_color_space = JCS_RGB;
  cinfo.scale_num = static_cast<unsigned>(job->scale_num);
  cinfo.scale_denom = 8;
  cinfo.dct_method = JDCT_ISLOW;  // TurboJPEG's default, as decode_jpeg
  cinfo.do_fancy_upsampling = TRUE;
  jpeg_start_decompress(&cinfo);
  job->scaled_width = static_cast<int>(cinfo.output_width);
  job->scaled_height = static_cast<int>(cinfo.output_height);
  if (job->y0 >= job->y1 || job->y1 > cinfo.output_height || job->x0 >= job->x1 || job->x1 > cinfo.output_width) {
    job->bad_request = "the window lies outside the scaled image";
    jpeg_destroy_decompress(&cinfo);
    return 2;
  }
  // jpeg_crop_scanline's first and last columns can differ from a full decode (the chroma
  // upsampling replicates the edge of the cropped region instead of reading its neighbour): one
  // column more is decoded on each side and dropped by the caller.
  JDIMENSION left = job->x0 > 0 ? job->x0 - 1 : 0;
  JDIMENSION cols = std::min<JDIMENSION>(job->x1 + 1, cinfo.output_width) - left;
  if (left > 0 || cols < cinfo.output_width) jpeg_crop_scanline(&cinfo, &left, &cols);
  job->left = left;
  job->cols = cols;
  const size_t row_bytes = size_t{cols} * 3;
  if (row_bytes * (job->y1 - job->y0 + 1) > job->capacity) {
    job->bad_request = "the region is larger than its buffer";
    jpeg_destroy_decompress(&cinfo);
    return 2;
  }
  if (job->y0 > 0) jpeg_skip_scanlines(&cinfo, job->y0);
  while (cinfo.output_scanline < job->y1) {
    JSAMPROW row = job->pixels + row_bytes * (cinfo.output_scanline - job->y0);
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  // A file that ends with the EOI marker is complete (a truncated one ends inside entropy-coded
  // data, where FF D9 cannot occur), and the rows below the window are not needed. Otherwise the
  // rest is skipped but its entropy-coded data still read, so that a truncated file is refused
  // whatever the window. (Skipping to the very end would not read it: libjpeg-turbo then just
  // moves the row counter, so the last row is decoded.)
  if (job->ends_with_eoi) {
    jpeg_destroy_decompress(&cinfo);
    return 0;
  }
  if (cinfo.output_scanline < cinfo.output_height) {
    if (cinfo.output_height - cinfo.output_scanline > 1)
      jpeg_skip_scanlines(&cinfo, cinfo.output_height - cinfo.output_scanline - 1);
    JSAMPROW row = job->pixels + row_bytes * (job->y1 - job->y0);
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  return 0;
}

torch::Tensor decode_jpeg(const uint8_t* data, size_t size, const std::string& source) {
  tjhandle tj = thread_decompressor();
  auto* buf = const_cast<unsigned char*>(data);  // TurboJPEG 2.x takes non-const input buffers
  const auto len = static_cast<unsigned long>(size);
  int width = 0, height = 0, subsamp = 0, colorspace = 0;
  if (tjDecompressHeader3(tj, buf, len, &width, &height, &subsamp, &colorspace) != 0)
    fail_and_discard_decompressor(source + ": invalid JPEG: " + tjGetErrorStr2(tj));
  check_dims(width, height, source, "JPEG");

  // CMYK / YCCK JPEGs can only be decompressed to CMYK. Practically all of them come from Adobe
  // software, which stores inverted CMYK; RGB = C*K/255 on the stored values is then what PIL
  // (and OpenCV) produce. ImageNet contains a few dozen such files.
  const bool cmyk = colorspace == TJCS_CMYK || colorspace == TJCS_YCCK;
  const int channels = cmyk ? 4 : 3;
  torch::Tensor hwc = torch::empty({height, width, channels}, torch::kUInt8);
  if (tjDecompress2(tj, buf, len, hwc.data_ptr<uint8_t>(), width, 0, height, cmyk ? TJPF_CMYK : TJPF_RGB, 0) != 0) {
    const std::string msg = tjGetErrorStr2(tj);
    // Warnings leave a usable image (e.g. "Corrupt JPEG data: N extraneous bytes"), except the
    // end-of-file warning: libjpeg then pads the missing part with gray, which we refuse to train on.
    if (tjGetErrorCode(tj) != TJERR_WARNING || contains_ci(msg, "premature end"))
      fail_and_discard_decompressor(source + ": cannot decode JPEG: " + msg);
  }
  if (cmyk) {
    torch::Tensor rgb = torch::empty({height, width, 3}, torch::kUInt8);
    const uint8_t* in = hwc.data_ptr<uint8_t>();
    uint8_t* out = rgb.data_ptr<uint8_t>();
    const int64_t n = int64_t{width} * height;
    for (int64_t p = 0; p < n; ++p, in += 4, out += 3) {
      const unsigned k = in[3];
      for (int c = 0; c < 3; ++c) out[c] = static_cast<uint8_t>((in[c] * k + 127) / 255);
    }
    hwc = rgb;
  }
  return hwc.permute({2, 0, 1}).contiguous();
}

torch::Tensor decode_png(const uint8_t* data, size_t size, const std::string& source) {
  png_image img;
  std::memset(&img, 0, sizeof(img));
  img.version = PNG_IMAGE_VERSION;
  // Frees libpng's state on every exit path (png_image_free is a no-op once finish_read ran).
  struct Guard {
    png_image* p;
    ~Guard() { png_image_free(p); }
  } guard{&img};

  if (!png_image_begin_read_from_memory(&img, data, size)) throw Error(source + ": invalid PNG: " + img.message);
  check_dims(img.width, img.height, source, "PNG");
  // Deflate expands at most ~1032:1, so a stream this small cannot hold the announced pixels
  // (a few bytes claiming a 10000x10000 image): refused before the output is allocated. The raw
  // stream has a filter byte and ceil(width * bits per pixel / 8) bytes per row; bit depth
  // (byte 24) and colour type (byte 25) come from the IHDR chunk libpng has just validated.
  static const int kSamples[7] = {1, 0, 3, 1, 2, 0, 4};  // per colour type 0..6
  const int depth = size > 25 ? data[24] : 1, color_type = size > 25 ? data[25] : 0;
  const uint64_t bits_per_pixel = uint64_t(depth) * (color_type >= 0 && color_type <= 6 ? kSamples[color_type] : 1);
  const uint64_t raw_bytes = ((uint64_t{img.width} * bits_per_pixel + 7) / 8 + 1) * uint64_t{img.height};
  if (raw_bytes / 1032 > size)
    throw Error(source + ": truncated or corrupt PNG: " + std::to_string(img.width) + "x" +
                std::to_string(img.height) + " pixels announced in a " + std::to_string(size) + "-byte file");
  // Keep the alpha channel if there is one and drop it afterwards: libpng would otherwise
  // composite onto a background, while PIL's convert("RGB") keeps the colour values as they are.
  const bool alpha = (img.format & PNG_FORMAT_FLAG_ALPHA) != 0;
  img.format = alpha ? PNG_FORMAT_RGBA : PNG_FORMAT_RGB;
  img.flags |= PNG_IMAGE_FLAG_16BIT_sRGB;
  const int channels = alpha ? 4 : 3;
  torch::Tensor hwc = torch::empty({int64_t{img.height}, int64_t{img.width}, channels}, torch::kUInt8);
  if (!png_image_finish_read(&img, nullptr, hwc.data_ptr<uint8_t>(), 0, nullptr))
    throw Error(source + ": cannot decode PNG: " + img.message);
  if (alpha) hwc = hwc.narrow(2, 0, 3);
  return hwc.permute({2, 0, 1}).contiguous();
}

// [C,H,W] uint8 with C in {1,3} -> contiguous [H,W,C] for the encoders.
torch::Tensor to_hwc(const torch::Tensor& u8_chw, const char* what) {
  if (u8_chw.dim() != 3 || u8_chw.scalar_type() != torch::kUInt8 || (u8_chw.size(0) != 1 && u8_chw.size(0) != 3))
    throw Error(std::string(what) + ": expected a uint8 [C,H,W] tensor with C = 1 or 3, got " +
                std::string(u8_chw.toString()) + " of shape " + c10::str(u8_chw.sizes()));
  if (u8_chw.size(1) == 0 || u8_chw.size(2) == 0) throw Error(std::string(what) + ": empty image");
  return u8_chw.permute({1, 2, 0}).contiguous();
}

}  // namespace

torch::Tensor decode_image(const uint8_t* data, size_t size, const std::string& source) {
  if (size == 0) throw Error(source + ": empty file");
  if (is_jpeg(data, size)) return decode_jpeg(data, size, source);
  if (is_png(data, size)) return decode_png(data, size, source);
  throw Error(source + ": not a JPEG or PNG file (unrecognised signature)");
}

bool read_jpeg_info(const uint8_t* data, size_t size, const std::string& source, JpegInfo& info) {
  if (!is_jpeg(data, size)) return false;
  RegionJob job{};
  job.data = data;
  job.size = size;
  job.header_only = true;
  if (run_region_decode(&job) != 0) throw Error(source + ": invalid JPEG: " + job.message);
  check_dims(job.image_width, job.image_height, source, "JPEG");
  info.width = job.image_width;
  info.height = job.image_height;
  info.cmyk = job.cmyk;
  return true;
}

int64_t jpeg_scaled_size(int64_t side, int scale_num) { return (side * scale_num + 7) / 8; }

ImageRegion decode_jpeg_region(const uint8_t* data, size_t size, const std::string& source, int scale_num,
                               int64_t y0, int64_t y1, int64_t x0, int64_t x1, std::vector<uint8_t>& buffer) {
  if (scale_num < 1 || scale_num > 8) throw Error(source + ": JPEG scale " + std::to_string(scale_num) + "/8 is not in 1/8..8/8");
  if (y0 < 0 || x0 < 0 || y1 <= y0 || x1 <= x0 || y1 > std::numeric_limits<JDIMENSION>::max() ||
      x1 > std::numeric_limits<JDIMENSION>::max())
    throw Error(source + ": invalid JPEG window rows [" + std::to_string(y0) + "," + std::to_string(y1) + ") x columns [" +
                std::to_string(x0) + "," + std::to_string(x1) + ")");
  // The header is read (and the size checked) before anything is allocated.
  JpegInfo info;
  if (!read_jpeg_info(data, size, source, info)) throw Error(source + ": not a JPEG file");
  if (info.cmyk) throw Error(source + ": CMYK JPEG: no region decoding (decode_image converts it)");
  if (y1 > jpeg_scaled_size(info.height, scale_num) || x1 > jpeg_scaled_size(info.width, scale_num))
    throw Error(source + ": cannot decode JPEG rows [" + std::to_string(y0) + "," + std::to_string(y1) + ") x columns [" +
                std::to_string(x0) + "," + std::to_string(x1) + ") at scale " + std::to_string(scale_num) +
                "/8: the window lies outside the scaled image");
  RegionJob job{};
  job.data = data;
  job.size = size;
  job.scale_num = scale_num;
  job.y0 = static_cast<JDIMENSION>(y0);
  job.y1 = static_cast<JDIMENSION>(y1);
  job.x0 = static_cast<JDIMENSION>(x0);
  job.x1 = static_cast<JDIMENSION>(x1);
  job.ends_with_eoi = size >= 4 && data[size - 2] == 0xFF && data[size - 1] == 0xD9;
  // jpeg_crop_scanline widens the window (plus the column each side) to an iMCU boundary, at
  // most 4 (horizontal sampling) x 8 pixels; one more row is scratch for the rows skipped below.
  job.capacity = static_cast<size_t>((y1 - y0 + 1) * (x1 - x0 + 2 + 32) * 3);
  if (buffer.size() < job.capacity) buffer.resize(job.capacity);
  job.pixels = buffer.data();
  const int rc = run_region_decode(&job);
  if (rc == 1) throw Error(source + ": cannot decode JPEG: " + job.message);
  if (rc == 2)
    throw Error(source + ": cannot decode JPEG rows [" + std::to_string(y0) + "," + std::to_string(y1) + ") x columns [" +
                std::to_string(x0) + "," + std::to_string(x1) + ") at scale " + std::to_string(scale_num) + "/8: " +
                job.bad_request);
  if (job.premature_eof) throw Error(source + ": cannot decode JPEG: Premature end of JPEG file");
  ImageRegion region;
  region.hwc = torch::from_blob(buffer.data(), {y1 - y0, static_cast<int64_t>(job.cols), 3}, torch::kUInt8)
                   .narrow(1, x0 - static_cast<int64_t>(job.left), x1 - x0);
  region.top = y0;
  region.left = x0;
  region.image_height = job.scaled_height;
  region.image_width = job.scaled_width;
  return region;
}

ImageRegion decode_jpeg_region(const uint8_t* data, size_t size, const std::string& source, int scale_num,
                               int64_t y0, int64_t y1, int64_t x0, int64_t x1) {
  std::vector<uint8_t> buffer;
  ImageRegion region = decode_jpeg_region(data, size, source, scale_num, y0, y1, x0, x1, buffer);
  region.hwc = region.hwc.clone();
  return region;
}

std::vector<uint8_t> read_file_bytes(const std::string& path) {
  // O_NONBLOCK and the type check: a FIFO or device named like an image must not hang the loader.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw Error(path + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(path + ": not a regular file");
  }
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(::fdopen(fd, "rb"), &std::fclose);
  if (!f) {
    ::close(fd);
    throw Error(path + ": cannot open: " + std::strerror(errno));
  }
  std::vector<uint8_t> bytes;
  auto too_large = [&](uint64_t n) {
    return Error(path + ": file of " + human_bytes(n) + " is larger than the " + human_bytes(kMaxImageFileBytes) +
                 " accepted for an image");
  };
  if (std::fseek(f.get(), 0, SEEK_END) == 0) {
    long n = std::ftell(f.get());
    if (n > 0 && static_cast<uint64_t>(n) > kMaxImageFileBytes) throw too_large(static_cast<uint64_t>(n));
    if (n > 0) bytes.reserve(static_cast<size_t>(n));
    std::rewind(f.get());
  }
  // Read to EOF rather than trusting the size: the file may change while it is read.
  uint8_t chunk[1 << 16];
  size_t got;
  while ((got = std::fread(chunk, 1, sizeof(chunk), f.get())) > 0) {
    if (bytes.size() + got > kMaxImageFileBytes) throw too_large(bytes.size() + got);
    bytes.insert(bytes.end(), chunk, chunk + got);
  }
  if (std::ferror(f.get())) throw Error(path + ": read failed: " + std::strerror(errno));
  return bytes;
}

torch::Tensor load_image(const std::string& path) {
  std::vector<uint8_t> bytes = read_file_bytes(path);
  return decode_image(bytes.data(), bytes.size(), path);
}

std::vector<uint8_t> encode_jpeg(const torch::Tensor& u8_chw, int quality) {
  torch::Tensor hwc = to_hwc(u8_chw, "encode_jpeg");
  const bool gray = hwc.size(2) == 1;
  TjHandle tj(tjInitCompress());
  if (!tj) throw Error(std::string("TurboJPEG: cannot create a compressor: ") + tjGetErrorStr2(nullptr));
  unsigned char* out = nullptr;
  unsigned long out_size = 0;
  int rc = tjCompress2(tj.get(), hwc.data_ptr<uint8_t>(), static_cast<int>(hwc.size(1)), 0,
                       static_cast<int>(hwc.size(0)), gray ? TJPF_GRAY : TJPF_RGB, &out, &out_size,
                       gray ? TJSAMP_GRAY : TJSAMP_420, quality, 0);
  std::unique_ptr<unsigned char, void (*)(unsigned char*)> owned(out, [](unsigned char* p) { tjFree(p); });
  if (rc != 0) throw Error(std::string("encode_jpeg: ") + tjGetErrorStr2(tj.get()));
  return std::vector<uint8_t>(out, out + out_size);
}

std::vector<uint8_t> encode_png(const torch::Tensor& u8_chw) {
  torch::Tensor hwc = to_hwc(u8_chw, "encode_png");
  png_image img;
  std::memset(&img, 0, sizeof(img));
  img.version = PNG_IMAGE_VERSION;
  img.width = static_cast<png_uint_32>(hwc.size(1));
  img.height = static_cast<png_uint_32>(hwc.size(0));
  img.format = hwc.size(2) == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB;
  png_alloc_size_t size = 0;
  // First call computes the size, second one writes.
  if (!png_image_write_to_memory(&img, nullptr, &size, 0, hwc.data_ptr<uint8_t>(), 0, nullptr))
    throw Error(std::string("encode_png: ") + img.message);
  std::vector<uint8_t> bytes(size);
  if (!png_image_write_to_memory(&img, bytes.data(), &size, 0, hwc.data_ptr<uint8_t>(), 0, nullptr))
    throw Error(std::string("encode_png: ") + img.message);
  bytes.resize(size);
  return bytes;
}

void write_file_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path.c_str(), "wb"), &std::fclose);
  if (!f) throw Error(path + ": cannot create: " + std::strerror(errno));
  if (!bytes.empty() && std::fwrite(bytes.data(), 1, bytes.size(), f.get()) != bytes.size())
    throw Error(path + ": write failed: " + std::strerror(errno));
  if (std::fclose(f.release()) != 0) throw Error(path + ": write failed: " + std::strerror(errno));
}

}  // namespace hd::data
