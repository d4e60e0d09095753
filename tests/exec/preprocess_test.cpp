// CLIP preprocessing against transformers (tests/fixtures/images/*.safetensors, made by tools/make_fixtures.py):
// `pixel_values` from transformers' CLIPImageProcessor, `pixel_values_pil` from Pillow + numpy doing the
// same steps, `decoded_rgb` Pillow's decoding of the file.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "adaptlink/exec/image.hpp"
#include "adaptlink/exec/model.hpp"
#include "adaptlink/exec/tensor_io.hpp"

namespace adaptlink::exec {
namespace {

const std::filesystem::path kImages = std::filesystem::path(ADAPTLINK_SOURCE_DIR) / "tests" / "fixtures" / "images";

at::Tensor to_tensor(const PixelValues& pv) {
  return at::from_blob(const_cast<float*>(pv.data.data()), {1, pv.channels, pv.height, pv.width},
                       at::TensorOptions().dtype(at::kFloat))
      .clone();
}

ImageProcessorConfig clip(int size, ResizeFlavour flavour) {
  ImageProcessorConfig c;
  c.shortest_edge = size;
  c.crop_height = c.crop_width = size;
  c.flavour = flavour;
  return c;
}

struct Case {
  std::string file;
  int size;
};

class Preprocess : public ::testing::TestWithParam<Case> {};

TEST_P(Preprocess, MatchesTransformersWithin002) {
  const auto& [file, size] = GetParam();
  std::string stem = file;
  std::replace(stem.begin(), stem.end(), '.', '_');
  auto ref = read_safetensors(kImages / fmt::format("{}_{}.safetensors", stem, size));
  ASSERT_TRUE(ref.has_value()) << ref.error().to_string();
  auto image = decode_image(kImages / file);
  ASSERT_TRUE(image.has_value()) << image.error().to_string();

  // Decoding: PNG is lossless, so exact; JPEG decoders may differ by a few levels.
  at::Tensor decoded =
      at::from_blob(image->pixels.data(), {image->height, image->width, 3}, at::TensorOptions().dtype(at::kByte));
  const at::Tensor want_rgb = ref->at("decoded_rgb");
  ASSERT_EQ(decoded.sizes(), want_rgb.sizes());
  const int64_t decode_diff = (decoded.to(at::kInt) - want_rgb.to(at::kInt)).abs().max().item<int64_t>();
  // Exact for PNG and, through libjpeg like Pillow, for JPEG; stb's JPEG decoder differs by a level or two.
  const bool exact = file.ends_with(".png") || jpeg_decoder() == "libjpeg";
  if (exact) {
    EXPECT_EQ(decode_diff, 0);
  } else {
    EXPECT_LE(decode_diff, 8);
  }

  auto tv = preprocess_image(*image, clip(size, ResizeFlavour::torchvision));
  ASSERT_TRUE(tv.has_value());
  const double tv_err = (to_tensor(*tv) - ref->at("pixel_values")).abs().max().item<double>();
  EXPECT_LE(tv_err, exact ? 0.02 : 0.06) << "vs transformers' CLIPImageProcessor";

  auto pil = preprocess_image(*image, clip(size, ResizeFlavour::pillow));
  ASSERT_TRUE(pil.has_value());
  const double pil_err = (to_tensor(*pil) - ref->at("pixel_values_pil")).abs().max().item<double>();
  if (exact) {
    EXPECT_LE(pil_err, 1e-5) << "vs Pillow's resize";
  } else {
    EXPECT_LE(pil_err, 0.02 + 8 / 255.0 / 0.26) << "vs Pillow's resize (after a different JPEG decoder)";
  }
  std::printf("%s@%d: max |diff| vs transformers %.5f, vs Pillow %.6f (decode diff %lld)\n", file.c_str(), size, tv_err,
              pil_err, static_cast<long long>(decode_diff));
}

INSTANTIATE_TEST_SUITE_P(Images, Preprocess,
                         ::testing::Values(Case{"test.png", 28}, Case{"test.png", 42}, Case{"test.png", 56},
                                           Case{"small.png", 28}, Case{"small.png", 42}, Case{"small.png", 56},
                                           Case{"gray.png", 28}, Case{"gray.png", 42}, Case{"gray.png", 56},
                                           Case{"test.jpg", 28}, Case{"test.jpg", 42}, Case{"test.jpg", 56}),
                         [](const auto& info) {
                           std::string s = info.param.file + "_" + std::to_string(info.param.size);
                           std::replace(s.begin(), s.end(), '.', '_');
                           return s;
                         });

// LLaVA-NeXT anyres preprocessing against transformers' LlavaNextImageProcessor (tests/fixtures/next_pixels, made by
// tools/make_next_goldens.py): 28-pixel crops, pinpoints [28, 56], [56, 28], [56, 56], [84, 28]; square-ish, wide,
// tall and smaller-than-a-tile images. `pixel_values_pil` is the same steps with Pillow's resampler.
class PreprocessAnyres : public ::testing::TestWithParam<std::string> {};

TEST_P(PreprocessAnyres, MatchesTransformersWithin002) {
  const std::string file = GetParam();
  const auto dir = std::filesystem::path(ADAPTLINK_SOURCE_DIR) / "tests" / "fixtures" / "next_pixels";
  std::string stem = file;
  std::replace(stem.begin(), stem.end(), '.', '_');
  auto ref = read_safetensors(dir / (stem + ".safetensors"));
  ASSERT_TRUE(ref.has_value()) << ref.error().to_string();
  auto image = decode_image(std::filesystem::exists(dir / file) ? dir / file : kImages / file);
  ASSERT_TRUE(image.has_value()) << image.error().to_string();
  const std::vector<std::array<int, 2>> pinpoints{{28, 56}, {56, 28}, {56, 56}, {84, 28}};
  const bool exact = file.ends_with(".png") || jpeg_decoder() == "libjpeg";
  for (const auto flavour : {ResizeFlavour::torchvision, ResizeFlavour::pillow}) {
    auto got = preprocess_anyres(*image, clip(28, flavour), pinpoints);
    ASSERT_TRUE(got.has_value()) << got.error().to_string();
    const at::Tensor want = ref->at(flavour == ResizeFlavour::torchvision ? "pixel_values" : "pixel_values_pil");
    ASSERT_EQ(want.size(0), got->crops) << file;
    const at::Tensor t = at::from_blob(got->data.data(), {got->crops, 3, got->height, got->width},
                                       at::TensorOptions().dtype(at::kFloat));
    ASSERT_EQ(t.sizes(), want.sizes());
    const double err = (t - want).abs().max().item<double>();
    if (flavour == ResizeFlavour::torchvision) {
      EXPECT_LE(err, exact ? 0.02 : 0.06) << file << " vs transformers' LlavaNextImageProcessor";
    } else {
      EXPECT_LE(err, exact ? 1e-5 : 0.02 + 8 / 255.0 / 0.26) << file << " vs Pillow";
    }
    const at::Tensor sizes = ref->at("image_sizes");
    EXPECT_EQ(got->image_size[0], sizes[0].item<int64_t>()) << file;
    EXPECT_EQ(got->image_size[1], sizes[1].item<int64_t>()) << file;
    std::printf("%s anyres (%s): %d crops, max |diff| %.6f\n", file.c_str(),
                flavour == ResizeFlavour::torchvision ? "transformers" : "Pillow", got->crops, err);
  }
}

INSTANTIATE_TEST_SUITE_P(Images, PreprocessAnyres,
                         ::testing::Values("test.png", "small.png", "gray.png", "test.jpg", "wide.png", "tall.png"),
                         [](const auto& info) {
                           std::string s = info.param;
                           std::replace(s.begin(), s.end(), '.', '_');
                           return s;
                         });

TEST(PreprocessAnyresErrors, NamesWhatIsWrong) {
  RgbImage img{10, 10, std::vector<uint8_t>(300, 7)};
  auto none = preprocess_anyres(img, clip(28, ResizeFlavour::torchvision), {});
  ASSERT_FALSE(none.has_value());
  EXPECT_NE(none.error().message.find("image_grid_pinpoints"), std::string::npos);
  auto odd = preprocess_anyres(img, clip(28, ResizeFlavour::torchvision), {{30, 56}});
  ASSERT_FALSE(odd.has_value());
  EXPECT_NE(odd.error().message.find("not a multiple of crop_size 28"), std::string::npos);
}

TEST(PreprocessConfig, ReadsPreprocessorConfig) {
  auto c = load_image_processor_config(std::filesystem::path(ADAPTLINK_SOURCE_DIR) / "tests" / "fixtures" /
                                       "llava_mistral_gqa_full" / "preprocessor_config.json");
  ASSERT_TRUE(c.has_value()) << c.error().to_string();
  EXPECT_EQ(c->shortest_edge, 42);
  EXPECT_EQ(c->crop_height, 42);
  EXPECT_EQ(c->resample, 3);
  EXPECT_NEAR(c->image_std[2], 0.27577711, 1e-9);
}

TEST(PreprocessConfig, RejectsBadValues) {
  auto bad = parse_image_processor_config(nlohmann::json{{"resample", 0}}, "p.json");
  ASSERT_FALSE(bad.has_value());
  EXPECT_NE(bad.error().to_string().find("p.json"), std::string::npos);
  EXPECT_FALSE(parse_image_processor_config(nlohmann::json{{"image_std", {1, 0, 1}}}, "p.json").has_value());
  EXPECT_FALSE(parse_image_processor_config(nlohmann::json{{"size", "big"}}, "p.json").has_value());
}

TEST(Decode, GarbageIsAnErrorNamingTheFile) {
  const std::string junk = "this is not an image";
  auto r = decode_image_memory(reinterpret_cast<const uint8_t*>(junk.data()), junk.size(), "junk.png");
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().to_string().find("junk.png"), std::string::npos);
  EXPECT_FALSE(decode_image("/nonexistent/file.png").has_value());
}

// A PNG header that claims 16384 x 16384 pixels (a decompression bomb is a few hundred KB of such a file): refused
// from the header, before any pixel is decoded. Special files are refused before they are read.
TEST(Decode, BombsAndSpecialFilesAreRefusedUpFront) {
  std::string png = "\x89PNG\r\n\x1a\n";
  png += std::string("\0\0\0\x0d", 4) + "IHDR";
  png += std::string("\0\0\x40\0\0\0\x40\0", 8);  // width, height 16384 (big-endian)
  png += std::string("\x08\x02\0\0\0", 5);        // 8-bit RGB
  png += std::string("\0\0\0\0", 4);              // CRC (not checked by the header scan)
  auto r = decode_image_memory(reinterpret_cast<const uint8_t*>(png.data()), png.size(), "bomb.png");
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().to_string().find("16384x16384 is 268.4 megapixels, more than the limit of 50"), std::string::npos)
      << r.error().to_string();
  auto zero = decode_image("/dev/zero");
  ASSERT_FALSE(zero.has_value());
  EXPECT_NE(zero.error().to_string().find("not a regular file"), std::string::npos) << zero.error().to_string();
}

}  // namespace
}  // namespace adaptlink::exec

namespace adaptlink::exec {
namespace {

// LLaVA-NeXT's packing of one image's projected features against transformers' LlavaNextModel.pack_image_features
// (tests/fixtures/next_pack.safetensors, tools/make_next_goldens.py): seeded random features and image_newline, the
// tiny grid (32-pixel tiles of 4x4 patches, pinpoints [32, 64], [64, 32], [64, 64], [96, 32]), ten image sizes from
// 1x1 to 2000x10 (some unpadded to no rows at all).
TEST(PackAnyres, EqualsTransformers) {
  auto ref =
      read_safetensors(std::filesystem::path(ADAPTLINK_SOURCE_DIR) / "tests" / "fixtures" / "next_pack.safetensors");
  ASSERT_TRUE(ref.has_value()) << ref.error().to_string();
  const nlohmann::json json = {{"model_type", "llava_next"},
                               {"image_grid_pinpoints", {{32, 64}, {64, 32}, {64, 64}, {96, 32}}},
                               {"vision_config",
                                {{"image_size", 32},
                                 {"patch_size", 8},
                                 {"hidden_size", 8},
                                 {"intermediate_size", 16},
                                 {"num_attention_heads", 1},
                                 {"num_hidden_layers", 1}}},
                               {"text_config",
                                {{"hidden_size", 16},
                                 {"intermediate_size", 32},
                                 {"num_attention_heads", 2},
                                 {"num_key_value_heads", 2},
                                 {"num_hidden_layers", 1},
                                 {"vocab_size", 64}}}};
  auto config = models::parse_llava_config(json, "config.json");
  ASSERT_TRUE(config.has_value()) << config.error().to_string();
  const at::Tensor sizes = ref->at("sizes");
  const at::Tensor newline = ref->at("image_newline");
  for (int64_t i = 0; i < sizes.size(0); ++i) {
    const int w = static_cast<int>(sizes[i][0].item<int64_t>());
    const int h = static_cast<int>(sizes[i][1].item<int64_t>());
    const at::Tensor want = ref->at(fmt::format("packed_{}", i));
    auto got = pack_anyres_features(*config, ref->at(fmt::format("features_{}", i)), w, h, newline);
    ASSERT_TRUE(got.has_value()) << got.error().to_string();
    ASSERT_EQ(got->sizes(), want.sizes()) << w << "x" << h;
    EXPECT_EQ(got->size(0), config->image_tokens_for(w, h)) << w << "x" << h;
    EXPECT_TRUE(at::equal(*got, want)) << w << "x" << h << ": max |diff| " << (*got - want).abs().max().item<double>();
  }
  // A tensor of the wrong crop count names the shape and the image.
  auto bad = pack_anyres_features(*config, ref->at("features_0").narrow(0, 0, 2), 32, 32, newline);
  ASSERT_FALSE(bad.has_value());
  EXPECT_NE(bad.error().message.find("expected [3, 16, hidden] for a 32x32 image"), std::string::npos)
      << bad.error().message;
}

}  // namespace
}  // namespace adaptlink::exec
