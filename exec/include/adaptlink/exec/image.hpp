// Image decoding (stb_image: PNG, JPEG, BMP, ...) and CLIPImageProcessor preprocessing (no torch).
//
// The steps are those of transformers' CLIPImageProcessor: convert to RGB, resize so that the shortest
// edge is `size.shortest_edge` (the long edge is truncated, int(size * long / short)), center crop,
// rescale (1/255), normalise with the mean/std. Resizing follows Pillow's separable convolution
// resampler: the filter support grows with the downscale factor (antialiasing), a horizontal pass then a
// vertical pass, fixed-point weights and an 8-bit intermediate image.
//
// Two flavours of the same algorithm are offered, because transformers changed back-ends:
//   * pillow       — Pillow's Image.resize (22-bit weights); the crop offset is floor((h - crop) / 2), as
//                    transformers 4.x's PIL-based CLIPImageProcessor does it.
//   * torchvision  — torch's uint8 antialiased kernel that transformers 5.x's (torchvision-based)
//                    CLIPImageProcessor calls: int16 weights with a precision chosen from the largest weight,
//                    and torchvision's center crop offset round((h - crop) / 2) (half to even).
// They differ by at most a couple of 8-bit levels.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "adaptlink/error.hpp"

namespace adaptlink::exec {

struct RgbImage {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> pixels;  // [height, width, 3] interleaved RGB
};

// "libjpeg" when JPEG goes through libjpeg(-turbo) like Pillow (exact), "stb" otherwise.
std::string_view jpeg_decoder();

// Decodes a PNG/JPEG/BMP/... file to RGB (alpha is dropped, grey is replicated, like PIL's convert("RGB")).
Expected<RgbImage> decode_image(const std::filesystem::path& path);
Expected<RgbImage> decode_image_memory(const uint8_t* data, size_t size, const std::string& name);

enum class ResizeFlavour { pillow, torchvision };

struct ImageProcessorConfig {
  bool do_convert_rgb = true;
  bool do_resize = true;
  int shortest_edge = 336;    // size.shortest_edge; 0 when size gives height/width
  int resize_height = 0;      // size.height / size.width (exact size, no aspect preservation)
  int resize_width = 0;
  int resample = 3;           // PIL: 3 bicubic, 2 bilinear
  bool do_center_crop = true;
  int crop_height = 336;
  int crop_width = 336;
  bool do_rescale = true;
  double rescale_factor = 1.0 / 255.0;
  bool do_normalize = true;
  std::array<double, 3> image_mean{0.48145466, 0.4578275, 0.40821073};
  std::array<double, 3> image_std{0.26862954, 0.26130258, 0.27577711};
  ResizeFlavour flavour = ResizeFlavour::torchvision;
};

// Parses preprocessor_config.json (CLIPImageProcessor fields; missing fields keep CLIP defaults).
Expected<ImageProcessorConfig> parse_image_processor_config(const nlohmann::json& json, const std::string& source);
Expected<ImageProcessorConfig> load_image_processor_config(const std::filesystem::path& path);

// Resizes an 8-bit RGB image with Pillow's resampling (bicubic or bilinear).
RgbImage resize_image(const RgbImage& in, int width, int height, int resample, ResizeFlavour flavour);

// Full preprocessing: returns [3, H, W] float pixel values, channel-first (what `pixel_values[0]` holds).
struct PixelValues {
  int channels = 3;
  int height = 0;
  int width = 0;
  std::vector<float> data;
};
Expected<PixelValues> preprocess_image(const RgbImage& image, const ImageProcessorConfig& config);

// LLaVA-NeXT (transformers' LlavaNextImageProcessor, "anyres"): the pinpoint [height, width] transformers picks
// (models::select_best_resolution), the image resized into it keeping its aspect ratio (the side that limits the
// scale exact, the other ceil'd), padded with zeros to it (centred), cut into crop-size tiles row by row, after a
// base view of the whole image resized to the processor's size (aspect not kept); every crop then goes through
// preprocess_image. `crops` x [3, height, width] channel-first, and the image's [height, width] (transformers'
// image_sizes), from which the model lays the tiles' features out (models::LlavaConfig::anyres_layout).
struct AnyresPixels {
  int crops = 0;
  int height = 0;
  int width = 0;
  std::vector<float> data;  // [crops, 3, height, width]
  std::array<int, 2> image_size{};  // [height, width] of the original image
};
Expected<AnyresPixels> preprocess_anyres(const RgbImage& image, const ImageProcessorConfig& config,
                                         const std::vector<std::array<int, 2>>& pinpoints);

}  // namespace adaptlink::exec
