// Requests for served runs: a requests file (JSONL) or synthetic requests of the scenario's shape.
#include <ATen/ATen.h>

#include <algorithm>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "adaptlink/exec/generate.hpp"
#include "adaptlink/exec/tensor_io.hpp"
#include "adaptlink/exec/tokenizer.hpp"
#include "serve_internal.hpp"

namespace adaptlink::exec {

namespace {

Error at_line(const std::filesystem::path& file, int line, std::string message) {
  return Error{std::move(message), file.string(), line, 0};
}

}  // namespace

std::optional<Tokenizer> load_tokenizer(const std::filesystem::path& model) {
  const auto path = model / "tokenizer.model";
  if (!std::filesystem::exists(path)) return std::nullopt;
  auto t = Tokenizer::load(path);
  if (!t) return std::nullopt;
  return std::move(t).value();
}

// Synthetic requests of the scenario's shape: <bos>, the image tokens, random text ids; random pixels.
std::vector<ExecRequest> synthetic_requests(const models::LlavaConfig& config, const models::RequestShape& shape,
                                            int count, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const int64_t vocab = config.text.vocab_size;
  std::uniform_int_distribution<int64_t> token(3, vocab - 1);
  std::vector<ExecRequest> out;
  for (int i = 0; i < count; ++i) {
    ExecRequest r;
    r.id = fmt::format("r{}", i);
    r.input_ids.push_back(1);
    for (int k = 0; k < config.image_tokens_per_image() * shape.images; ++k)
      r.input_ids.push_back(config.image_token_index);
    for (int k = 1; k < shape.prompt_tokens; ++k) {
      int64_t t = token(rng);
      if (t == config.image_token_index) t = 2;
      r.input_ids.push_back(t);
    }
    if (shape.images > 0) {
      at::Tensor pixels =
          at::empty({shape.images, config.vision.num_channels, config.vision.image_size, config.vision.image_size});
      std::normal_distribution<float> normal(0.0F, 1.0F);
      auto* p = pixels.data_ptr<float>();
      for (int64_t k = 0; k < pixels.numel(); ++k) p[k] = normal(rng);
      r.pixel_values = pixels;
    }
    r.max_new_tokens = shape.output_tokens;
    out.push_back(std::move(r));
  }
  return out;
}

Expected<Ok> check_context(const models::LlavaConfig& config, size_t prompt_ids, long long max_new_tokens) {
  const long long context = config.text.max_position_embeddings;
  const long long prompt = static_cast<long long>(prompt_ids);
  if (prompt + max_new_tokens <= context) return Ok{};
  if (prompt >= context) {
    return make_error(
        "the prompt is {} tokens (image tokens included), the model's context is {} "
        "(max_position_embeddings)",
        prompt, context);
  }
  return make_error(
      "{} prompt tokens (image tokens included) + {} new tokens exceed the model's context of {} "
      "(max_position_embeddings): at most {} new tokens fit",
      prompt, max_new_tokens, context, context - prompt);
}

Expected<Ok> check_image_tokens(const models::LlavaConfig& config, const std::vector<int64_t>& ids, bool has_image) {
  if (has_image) return Ok{};  // the model checks the count against the image's features
  const auto n = std::count(ids.begin(), ids.end(), static_cast<int64_t>(config.image_token_index));
  if (n == 0) return Ok{};
  return make_error("the prompt holds {} image token(s) (id {}) but no image was given", n, config.image_token_index);
}

Expected<std::vector<ExecRequest>> read_requests(const std::filesystem::path& file, const std::filesystem::path& model,
                                                 int default_max_new_tokens) {
  std::ifstream in(file);
  if (!in) return Error{"cannot open the requests file", file.string(), 0, 0};
  auto loaded = load_checkpoint_config(model);  // the config is all a request needs
  if (!loaded) return loaded.error();
  const auto& config = *loaded;
  std::optional<Tokenizer> tokenizer = load_tokenizer(model);
  std::optional<ImageProcessorConfig> processor;
  const auto base = file.parent_path();
  auto resolve = [&](const std::string& p) {
    std::filesystem::path path(p);
    return path.is_absolute() ? path : base / path;
  };
  // The fields of one request after its id (the error is the request's alone).
  auto parse_request = [&](const nlohmann::json& j, ExecRequest& r) -> Status {
    for (const auto& [key, value] : j.items()) {
      if (key != "id" && key != "prompt" && key != "input_ids" && key != "image" && key != "pixel_values" &&
          key != "max_new_tokens") {
        return make_error("unknown key '{}'", key);
      }
    }
    if (j.contains("image") && j.contains("pixel_values")) return make_error("give 'image' or 'pixel_values', not both");
    if (j.contains("image")) {
      if (!j["image"].is_string()) return make_error("'image' must be a path");
      if (!processor) {
        auto p = checkpoint_image_processor(model, config);
        if (!p) return p.error();
        processor = *p;
      }
      auto pv = pixel_values_for_image(resolve(j["image"].get<std::string>()), *processor);
      if (!pv) return make_error("{}", pv.error().to_string());
      r.pixel_values = *pv;
    } else if (j.contains("pixel_values")) {
      if (!j["pixel_values"].is_string()) return make_error("'pixel_values' must be a path");
      auto pv = read_safetensors_tensor(resolve(j["pixel_values"].get<std::string>()), "pixel_values");
      if (!pv) return make_error("{}", pv.error().to_string());
      r.pixel_values = pv->dim() == 3 ? pv->unsqueeze(0) : *pv;
    }
    const bool has_image = r.pixel_values.defined();
    if (j.contains("prompt") == j.contains("input_ids")) return make_error("give exactly one of 'prompt' and 'input_ids'");
    if (j.contains("input_ids")) {
      if (!j["input_ids"].is_array() || j["input_ids"].empty()) {
        return make_error("'input_ids' must be a non-empty array of token ids");
      }
      for (const auto& id : j["input_ids"]) {
        if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= config.text.vocab_size) {
          return make_error("'input_ids' must be ids in [0, {})", config.text.vocab_size);
        }
        r.input_ids.push_back(id.get<int64_t>());
      }
    } else {
      if (!j["prompt"].is_string()) return make_error("'prompt' must be a string");
      if (!tokenizer) return make_error("{} has no tokenizer.model: use input_ids", model.string());
      const std::string text = llava_prompt_text(j["prompt"].get<std::string>(), has_image);
      r.input_ids = tokenize_with_images(
          *tokenizer, text, config.image_token_index,
          has_image ? config.image_tokens_per_image() * static_cast<int>(r.pixel_values.size(0)) : 0);
    }
    r.max_new_tokens = default_max_new_tokens;
    if (j.contains("max_new_tokens")) {
      if (!j["max_new_tokens"].is_number_integer() || j["max_new_tokens"].get<int64_t>() < 0) {
        return make_error("'max_new_tokens' must be a non-negative integer");
      }
      if (j["max_new_tokens"].get<int64_t>() > std::numeric_limits<int>::max()) {
        return make_error("'max_new_tokens' is out of range");
      }
      r.max_new_tokens = j["max_new_tokens"].get<int>();
    }
    if (auto fits = check_context(config, r.input_ids.size(), r.max_new_tokens); !fits) return fits.error();
    if (auto images = check_image_tokens(config, r.input_ids, has_image); !images) return images.error();
    return Ok{};
  };
  std::vector<ExecRequest> out;
  std::map<std::string, int> first_line;  // request id -> the line that gave it
  std::string line;
  int number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object()) return at_line(file, number, "not a JSON object");
    ExecRequest r;
    if (j.contains("id")) {
      if (j["id"].is_string()) {
        r.id = j["id"].get<std::string>();
      } else if (j["id"].is_number_integer()) {
        r.id = std::to_string(j["id"].get<int64_t>());
      } else {
        return at_line(file, number, "'id' must be a string or an integer");
      }
    } else {
      r.id = std::to_string(out.size());  // its index among the requests
    }
    if (auto [it, fresh] = first_line.emplace(r.id, number); !fresh) {
      return at_line(
          file, number,
          fmt::format("request id '{}' is used again (first at line {}); outputs are matched by id", r.id, it->second));
    }
    // From here on a bad request is refused alone: its outputs line is its error, the others run.
    if (auto st = parse_request(j, r); !st) {
      r = ExecRequest{r.id, {}, {}, 0, at_line(file, number, st.error().message).to_string()};
    }
    out.push_back(std::move(r));
  }
  if (out.empty()) return Error{"no requests in the file", file.string(), 0, 0};
  return out;
}

}  // namespace adaptlink::exec
