#include "adaptlink/exec/image.hpp"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <optional>

#include "adaptlink/models/config.hpp"
#include "adaptlink/read_file.hpp"

#define STB_IMAGE_IMPLEMENTATION
#define STBI_FAILURE_USERMSG
#define STBI_NO_SIMD  // the scalar YCbCr->RGB conversion is closer to libjpeg
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#endif
#include <stb_image.h>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

#if defined(ADAPTLINK_HAVE_LIBJPEG)
#include <jpeglib.h>

#include <csetjmp>
#include <cstdio>
#endif

namespace adaptlink::exec {
namespace {

// Limits against decompression bombs: LLaVA never needs more than a few thousand pixels a side.
constexpr int kMaxSide = 16384;
constexpr long long kMaxPixels = 50'000'000;             // a 48-megapixel phone photo fits; a 16384^2 bomb does not
constexpr std::uintmax_t kMaxImageBytes = 256ull << 20;  // the encoded file

Expected<Ok> check_image_size(long long w, long long h, const std::string& name) {
  if (w <= 0 || h <= 0 || w > kMaxSide || h > kMaxSide) {
    return Error{fmt::format("image size {}x{} is out of range (1..{} a side)", w, h, kMaxSide), name, 0, 0};
  }
  if (w * h > kMaxPixels) {
    return Error{fmt::format("image size {}x{} is {:.1f} megapixels, more than the limit of {:.0f}", w, h,
                             static_cast<double>(w * h) / 1e6, kMaxPixels / 1e6),
                 name, 0, 0};
  }
  return Ok{};
}

#if defined(ADAPTLINK_HAVE_LIBJPEG)
// JPEG through libjpeg(-turbo), as Pillow decodes it (islow IDCT, fancy upsampling), so that pixel values
// match transformers exactly; stb_image's decoder differs by a level or two.
struct JpegError {
  jpeg_error_mgr mgr;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void jpeg_fail(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegError*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  std::longjmp(err->jump, 1);
}

std::optional<Expected<RgbImage>> decode_jpeg(const uint8_t* data, size_t size, const std::string& name) {
  if (size < 3 || data[0] != 0xFF || data[1] != 0xD8) return std::nullopt;
  jpeg_decompress_struct cinfo{};
  JpegError err{};
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = jpeg_fail;
  RgbImage image;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    return Expected<RgbImage>(Error{fmt::format("cannot decode JPEG: {}", err.message), name, 0, 0});
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, static_cast<unsigned long>(size));
  jpeg_read_header(&cinfo, TRUE);
  if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
    jpeg_destroy_decompress(&cinfo);
    return std::nullopt;  // let stb try
  }
  if (auto fits = check_image_size(cinfo.image_width, cinfo.image_height, name); !fits) {
    jpeg_destroy_decompress(&cinfo);
    return Expected<RgbImage>(fits.error());
  }
  cinfo.out_color_space = JCS_RGB;
  cinfo.dct_method = JDCT_ISLOW;
  cinfo.do_fancy_upsampling = TRUE;
  jpeg_start_decompress(&cinfo);
  image.width = static_cast<int>(cinfo.output_width);
  image.height = static_cast<int>(cinfo.output_height);
  image.pixels.resize(static_cast<size_t>(image.width) * image.height * 3);
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW row = image.pixels.data() + static_cast<size_t>(cinfo.output_scanline) * image.width * 3;
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  return Expected<RgbImage>(std::move(image));
}
#endif

double bicubic_filter(double x) {
  constexpr double a = -0.5;  // Pillow's (and torch's antialiased) bicubic
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

double bilinear_filter(double x) {
  if (x < 0.0) x = -x;
  if (x < 1.0) return 1.0 - x;
  return 0.0;
}

struct Coefficients {
  int ksize = 0;
  int precision = 0;
  std::vector<int> bounds;   // [out * 2]: xmin, xsize
  std::vector<int> weights;  // [out * ksize], fixed point
};

// Pillow's precompute_coeffs + normalize_coeffs_8bpc (or torch's int16 variant of them).
Coefficients precompute(int in_size, int out_size, int resample, ResizeFlavour flavour) {
  const double filter_support = resample == 2 ? 1.0 : 2.0;
  auto filter = resample == 2 ? bilinear_filter : bicubic_filter;
  const double scale = static_cast<double>(in_size) / out_size;
  const double filterscale = std::max(scale, 1.0);
  const double support = filter_support * filterscale;
  Coefficients c;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.bounds.resize(static_cast<size_t>(out_size) * 2);
  std::vector<double> kk(static_cast<size_t>(out_size) * c.ksize, 0.0);
  double wt_max = 0.0;
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double* k = &kk[static_cast<size_t>(xx) * c.ksize];
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      const double w = filter((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (int x = 0; x < xmax; ++x) {
      if (ww != 0.0) k[x] /= ww;
      wt_max = std::max(wt_max, k[x]);
    }
    c.bounds[xx * 2] = xmin;
    c.bounds[xx * 2 + 1] = xmax;
  }
  if (flavour == ResizeFlavour::pillow) {
    c.precision = 32 - 8 - 2;  // Pillow's PRECISION_BITS
  } else {
    // torch: the most bits such that the largest weight still fits an int16.
    int p = 0;
    for (p = 0; p < 22; ++p) {
      const int next = static_cast<int>(0.5 + wt_max * (1 << (p + 1)));
      if (next >= (1 << 15)) break;
    }
    c.precision = p;
  }
  c.weights.resize(kk.size());
  for (size_t i = 0; i < kk.size(); ++i) {
    const double v = kk[i] * (1 << c.precision);
    c.weights[i] = v < 0 ? static_cast<int>(-0.5 + v) : static_cast<int>(0.5 + v);
  }
  return c;
}

inline uint8_t clip8(int64_t acc, int precision) {
  const int64_t v = acc >> precision;  // arithmetic shift: floor
  return static_cast<uint8_t>(std::clamp<int64_t>(v, 0, 255));
}

RgbImage resample_horizontal(const RgbImage& in, int out_w, int resample, ResizeFlavour flavour) {
  const Coefficients c = precompute(in.width, out_w, resample, flavour);
  RgbImage out{out_w, in.height, std::vector<uint8_t>(static_cast<size_t>(out_w) * in.height * 3)};
  for (int y = 0; y < in.height; ++y) {
    const uint8_t* row = &in.pixels[static_cast<size_t>(y) * in.width * 3];
    uint8_t* dst = &out.pixels[static_cast<size_t>(y) * out_w * 3];
    for (int xx = 0; xx < out_w; ++xx) {
      const int xmin = c.bounds[xx * 2];
      const int xsize = c.bounds[xx * 2 + 1];
      const int* k = &c.weights[static_cast<size_t>(xx) * c.ksize];
      for (int ch = 0; ch < 3; ++ch) {
        int64_t acc = int64_t{1} << (c.precision - 1);
        for (int x = 0; x < xsize; ++x) acc += int64_t{row[(x + xmin) * 3 + ch]} * k[x];
        dst[xx * 3 + ch] = clip8(acc, c.precision);
      }
    }
  }
  return out;
}

RgbImage resample_vertical(const RgbImage& in, int out_h, int resample, ResizeFlavour flavour) {
  const Coefficients c = precompute(in.height, out_h, resample, flavour);
  RgbImage out{in.width, out_h, std::vector<uint8_t>(static_cast<size_t>(in.width) * out_h * 3)};
  const size_t stride = static_cast<size_t>(in.width) * 3;
  for (int yy = 0; yy < out_h; ++yy) {
    const int ymin = c.bounds[yy * 2];
    const int ysize = c.bounds[yy * 2 + 1];
    const int* k = &c.weights[static_cast<size_t>(yy) * c.ksize];
    uint8_t* dst = &out.pixels[static_cast<size_t>(yy) * stride];
    for (size_t i = 0; i < stride; ++i) {
      int64_t acc = int64_t{1} << (c.precision - 1);
      for (int y = 0; y < ysize; ++y) acc += int64_t{in.pixels[(y + ymin) * stride + i]} * k[y];
      dst[i] = clip8(acc, c.precision);
    }
  }
  return out;
}

Error config_error(const std::string& source, std::string message) { return Error{std::move(message), source, 0, 0}; }

}  // namespace

std::string_view jpeg_decoder() {
#if defined(ADAPTLINK_HAVE_LIBJPEG)
  return "libjpeg";
#else
  return "stb";
#endif
}

Expected<RgbImage> decode_image_memory(const uint8_t* data, size_t size, const std::string& name) {
#if defined(ADAPTLINK_HAVE_LIBJPEG)
  if (auto jpeg = decode_jpeg(data, size, name)) return std::move(*jpeg);
#endif
  int w = 0;
  int h = 0;
  int channels = 0;
  if (size > static_cast<size_t>(std::numeric_limits<int>::max())) return Error{"image file too large", name, 0, 0};
  if (!stbi_info_from_memory(data, static_cast<int>(size), &w, &h, &channels)) {
    return Error{fmt::format("cannot decode image: {}", stbi_failure_reason()), name, 0, 0};
  }
  if (auto fits = check_image_size(w, h, name); !fits) return fits.error();
  unsigned char* pixels = stbi_load_from_memory(data, static_cast<int>(size), &w, &h, &channels, 3);
  if (pixels == nullptr) return Error{fmt::format("cannot decode image: {}", stbi_failure_reason()), name, 0, 0};
  RgbImage image{w, h, std::vector<uint8_t>(pixels, pixels + static_cast<size_t>(w) * h * 3)};
  stbi_image_free(pixels);
  return image;
}

Expected<RgbImage> decode_image(const std::filesystem::path& path) {
  auto bytes = read_input_file(path, "the image file", kMaxImageBytes);
  if (!bytes) return bytes.error();
  return decode_image_memory(reinterpret_cast<const uint8_t*>(bytes->data()), bytes->size(), path.string());
}

RgbImage resize_image(const RgbImage& in, int width, int height, int resample, ResizeFlavour flavour) {
  RgbImage cur = in;
  if (width != in.width) cur = resample_horizontal(cur, width, resample, flavour);
  if (height != in.height) cur = resample_vertical(cur, height, resample, flavour);
  return cur;
}

Expected<ImageProcessorConfig> parse_image_processor_config(const nlohmann::json& j, const std::string& source) {
  ImageProcessorConfig c;
  if (!j.is_object()) return config_error(source, "expected a JSON object");
  try {
    auto get_bool = [&](const char* key, bool& out) {
      if (j.contains(key) && !j[key].is_null()) out = j[key].get<bool>();
    };
    get_bool("do_convert_rgb", c.do_convert_rgb);
    get_bool("do_resize", c.do_resize);
    get_bool("do_center_crop", c.do_center_crop);
    get_bool("do_rescale", c.do_rescale);
    get_bool("do_normalize", c.do_normalize);
    if (j.contains("size") && !j["size"].is_null()) {
      const auto& s = j["size"];
      if (s.is_number_integer()) {
        c.shortest_edge = s.get<int>();
      } else if (s.contains("shortest_edge")) {
        c.shortest_edge = s["shortest_edge"].get<int>();
      } else if (s.contains("height") && s.contains("width")) {
        c.shortest_edge = 0;
        c.resize_height = s["height"].get<int>();
        c.resize_width = s["width"].get<int>();
      } else {
        return config_error(source, "size: expected {\"shortest_edge\"} or {\"height\", \"width\"}");
      }
    }
    if (j.contains("crop_size") && !j["crop_size"].is_null()) {
      const auto& s = j["crop_size"];
      if (s.is_number_integer()) {
        c.crop_height = c.crop_width = s.get<int>();
      } else {
        c.crop_height = s.at("height").get<int>();
        c.crop_width = s.at("width").get<int>();
      }
    }
    if (j.contains("resample") && !j["resample"].is_null()) c.resample = j["resample"].get<int>();
    if (j.contains("rescale_factor") && !j["rescale_factor"].is_null())
      c.rescale_factor = j["rescale_factor"].get<double>();
    for (const char* key : {"image_mean", "image_std"}) {
      if (!j.contains(key) || j[key].is_null()) continue;
      auto& dst = std::string_view(key) == "image_mean" ? c.image_mean : c.image_std;
      const auto& v = j[key];
      if (v.is_number()) {
        dst.fill(v.get<double>());
      } else if (v.is_array() && v.size() == 3) {
        for (int i = 0; i < 3; ++i) dst[i] = v[i].get<double>();
      } else {
        return config_error(source, fmt::format("{}: expected a number or 3 numbers", key));
      }
    }
  } catch (const nlohmann::json::exception& e) {
    return config_error(source, fmt::format("bad value: {}", e.what()));
  }
  if (c.resample != 2 && c.resample != 3) {
    return config_error(source, fmt::format("resample {} is not supported (2 bilinear or 3 bicubic)", c.resample));
  }
  if ((c.do_resize && c.shortest_edge <= 0 && (c.resize_height <= 0 || c.resize_width <= 0)) || c.crop_height <= 0 ||
      c.crop_width <= 0 || c.shortest_edge > kMaxSide || c.crop_height > kMaxSide || c.crop_width > kMaxSide) {
    return config_error(source, "size / crop_size out of range");
  }
  for (double s : c.image_std) {
    if (s == 0.0) return config_error(source, "image_std holds a zero");
  }
  return c;
}

Expected<ImageProcessorConfig> load_image_processor_config(const std::filesystem::path& path) {
  auto text = read_input_file(path, path.filename().string());
  if (!text) return text.error();
  try {
    return parse_image_processor_config(nlohmann::json::parse(*text), path.string());
  } catch (const nlohmann::json::exception& e) {
    return config_error(path.string(), fmt::format("bad JSON: {}", e.what()));
  }
}

Expected<PixelValues> preprocess_image(const RgbImage& image, const ImageProcessorConfig& config) {
  if (image.width <= 0 || image.height <= 0) return make_error("empty image");
  RgbImage cur = image;
  if (config.do_resize) {
    int new_w = 0;
    int new_h = 0;
    if (config.shortest_edge > 0) {
      const bool width_short = image.width <= image.height;
      const int short_side = width_short ? image.width : image.height;
      const int long_side = width_short ? image.height : image.width;
      const int new_short = config.shortest_edge;
      const int new_long = static_cast<int>(static_cast<double>(new_short) * long_side / short_side);
      new_w = width_short ? new_short : new_long;
      new_h = width_short ? new_long : new_short;
    } else {
      new_w = config.resize_width;
      new_h = config.resize_height;
    }
    cur = resize_image(cur, new_w, new_h, config.resample, config.flavour);
  }
  int top = 0;
  int left = 0;
  int out_h = cur.height;
  int out_w = cur.width;
  if (config.do_center_crop) {
    out_h = config.crop_height;
    out_w = config.crop_width;
    if (config.flavour == ResizeFlavour::pillow) {
      top = (cur.height - out_h) / 2;
      left = (cur.width - out_w) / 2;
      if (cur.height - out_h < 0) top = -((out_h - cur.height + 1) / 2);
      if (cur.width - out_w < 0) left = -((out_w - cur.width + 1) / 2);
    } else {
      // transformers 5.x crops at floor((h - crop) / 2) as well (torchvision's center_crop would round).
      top = (cur.height - out_h) / 2;
      left = (cur.width - out_w) / 2;
      if (cur.height - out_h < 0) top = -((out_h - cur.height + 1) / 2);
      if (cur.width - out_w < 0) left = -((out_w - cur.width + 1) / 2);
    }
  }
  PixelValues out{3, out_h, out_w, std::vector<float>(static_cast<size_t>(3) * out_h * out_w)};
  for (int ch = 0; ch < 3; ++ch) {
    for (int y = 0; y < out_h; ++y) {
      for (int x = 0; x < out_w; ++x) {
        const int sy = y + top;
        const int sx = x + left;
        // Crops larger than the image pad with zeros (as transformers does).
        double v = (sy >= 0 && sy < cur.height && sx >= 0 && sx < cur.width)
                       ? cur.pixels[(static_cast<size_t>(sy) * cur.width + sx) * 3 + ch]
                       : 0.0;
        if (config.do_rescale) v *= config.rescale_factor;
        if (config.do_normalize) v = (v - config.image_mean[ch]) / config.image_std[ch];
        out.data[(static_cast<size_t>(ch) * out_h + y) * out_w + x] = static_cast<float>(v);
      }
    }
  }
  return out;
}

Expected<AnyresPixels> preprocess_anyres(const RgbImage& image, const ImageProcessorConfig& config,
                                         const std::vector<std::array<int, 2>>& pinpoints) {
  if (image.width <= 0 || image.height <= 0) return make_error("empty image");
  if (pinpoints.empty()) return make_error("anyres preprocessing needs image_grid_pinpoints");
  const int tile = config.crop_height;
  if (tile <= 0 || config.crop_width != tile) return make_error("anyres preprocessing needs a square crop_size");
  const auto [best_h, best_w] = models::select_best_resolution(image.width, image.height, pinpoints);
  if (best_h % tile != 0 || best_w % tile != 0) {
    return make_error("image_grid_pinpoints entry [{}, {}] is not a multiple of crop_size {}", best_h, best_w, tile);
  }
  // _resize_for_patching: fit into the pinpoint, aspect kept.
  const double scale_w = static_cast<double>(best_w) / image.width;
  const double scale_h = static_cast<double>(best_h) / image.height;
  int new_w = best_w;
  int new_h = best_h;
  if (scale_w < scale_h) {
    new_h = std::min(static_cast<int>(std::ceil(image.height * scale_w)), best_h);
  } else {
    new_w = std::min(static_cast<int>(std::ceil(image.width * scale_h)), best_w);
  }
  const RgbImage resized = resize_image(image, new_w, new_h, config.resample, config.flavour);
  // _pad_for_patching: centred on a black canvas of the pinpoint's size.
  RgbImage padded{best_w, best_h, std::vector<uint8_t>(static_cast<size_t>(best_w) * best_h * 3, 0)};
  const int left = (best_w - new_w) / 2;
  const int top = (best_h - new_h) / 2;
  for (int y = 0; y < new_h; ++y) {
    std::copy_n(resized.pixels.begin() + static_cast<std::ptrdiff_t>(y) * new_w * 3, static_cast<size_t>(new_w) * 3,
                padded.pixels.begin() + (static_cast<std::ptrdiff_t>(y + top) * best_w + left) * 3);
  }
  // The base view: the whole image at the processor's size (size.height x size.width, or shortest_edge squared).
  const int base_w = config.shortest_edge > 0 ? config.shortest_edge : config.resize_width;
  const int base_h = config.shortest_edge > 0 ? config.shortest_edge : config.resize_height;
  std::vector<RgbImage> crops{resize_image(image, base_w, base_h, config.resample, config.flavour)};
  for (int y = 0; y < best_h; y += tile) {
    for (int x = 0; x < best_w; x += tile) {
      RgbImage t{tile, tile, std::vector<uint8_t>(static_cast<size_t>(tile) * tile * 3)};
      for (int r = 0; r < tile; ++r) {
        std::copy_n(padded.pixels.begin() + (static_cast<std::ptrdiff_t>(y + r) * best_w + x) * 3,
                    static_cast<size_t>(tile) * 3, t.pixels.begin() + static_cast<std::ptrdiff_t>(r) * tile * 3);
      }
      crops.push_back(std::move(t));
    }
  }
  AnyresPixels out;
  out.crops = static_cast<int>(crops.size());
  out.image_size = {image.height, image.width};
  for (const auto& c : crops) {
    auto pv = preprocess_image(c, config);
    if (!pv) return pv.error();
    if (out.height == 0) {
      out.height = pv->height;
      out.width = pv->width;
    } else if (pv->height != out.height || pv->width != out.width) {
      return make_error("anyres crops of different sizes ({}x{} and {}x{})", pv->width, pv->height, out.width,
                        out.height);
    }
    out.data.insert(out.data.end(), pv->data.begin(), pv->data.end());
  }
  return out;
}

}  // namespace adaptlink::exec
