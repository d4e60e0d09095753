// adaptlink-run: LLaVA generation with libtorch.
//
//   adaptlink-run generate --model DIR (--prompt TEXT | --input-ids 1,2,3) [--image FILE | --pixel-values FILE]
//                          [--max-new-tokens N] [--dtype fp32|bf16|fp16] [--device cpu|cuda] [--format text|json]
//                          [--dump-logits FILE.safetensors] [--stages 1] [--threads N]
//
// Bad input (flags, files, checkpoints) prints one line "adaptlink-run: error: ..." and exits with 2.
#include <ATen/Parallel.h>
#include <ATen/ops/tensor.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "adaptlink/exec/generate.hpp"
#include "adaptlink/exec/tensor_io.hpp"
#include "adaptlink/exec/tokenizer.hpp"
#include "common.hpp"

namespace {

using namespace adaptlink;
using namespace adaptlink::exec;

constexpr int kExitBadInput = 2;

int fail(const std::string& message) {
  std::string one_line = message;
  for (char& c : one_line) {
    if (c == '\n') c = ' ';
  }
  std::fprintf(stderr, "adaptlink-run: error: %s\n", one_line.c_str());
  return kExitBadInput;
}

Expected<std::vector<int64_t>> parse_ids(const std::string& text) {
  std::vector<int64_t> ids;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t comma = text.find(',', pos);
    std::string item = text.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    // trim
    while (!item.empty() && std::isspace(static_cast<unsigned char>(item.front()))) item.erase(item.begin());
    while (!item.empty() && std::isspace(static_cast<unsigned char>(item.back()))) item.pop_back();
    if (item.empty()) return make_error("--input-ids: empty item in '{}' (expected e.g. 1,2,3)", text);
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != item.size() || v < 0) return make_error("--input-ids: '{}' is not a non-negative integer", item);
    ids.push_back(v);
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return ids;
}

struct GenerateArgs {
  std::string model;
  std::optional<std::string> prompt;
  std::optional<std::string> input_ids;
  std::optional<std::string> image;
  std::optional<std::string> pixel_values;
  int max_new_tokens = 32;
  int stages = 1;
  int local_stages = 1;
  std::string dtype = "fp32";
  std::string device = "cpu";
  std::string format = "text";
  std::optional<std::string> dump_logits;
  int threads = 0;
};

int run_generate(const GenerateArgs& args) {
  if (args.stages != 1) {
    return fail(fmt::format("--stages {}: multi-process pipelines are not available in this build (only --stages 1)",
                            args.stages));
  }
  if (args.max_new_tokens < 0) return fail("--max-new-tokens must be >= 0");
  if (args.threads > 0) at::set_num_threads(args.threads);
  auto options = parse_exec_options(args.dtype, args.device);
  if (!options) return fail(options.error().to_string());

  const auto load_start = std::chrono::steady_clock::now();
  auto probe = Checkpoint::open(args.model);
  if (!probe) return fail(probe.error().to_string());
  auto graph = models::LayerGraph::build(probe->config(), models::Dtype::fp32);
  const auto ranges = split_even(graph, args.local_stages);
  auto runner = LlavaRunner::load(args.model, *options, ranges);
  if (!runner) return fail(runner.error().to_string());
  const double load_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - load_start).count();
  const auto& config = (*runner)->checkpoint().config();

  // Image.
  at::Tensor pixels;
  if (args.image) {
    auto pv = (*runner)->pixel_values_for_image(*args.image);
    if (!pv) return fail(pv.error().to_string());
    pixels = *pv;
  } else if (args.pixel_values) {
    auto pv = read_safetensors_tensor(*args.pixel_values, "pixel_values");
    if (!pv) return fail(pv.error().to_string());
    pixels = *pv;
    if (pixels.dim() == 3) pixels = pixels.unsqueeze(0);
    if (pixels.dim() != 4) {
      return fail(fmt::format("{}: pixel_values has {} dimensions, expected [crops, 3, H, W]", *args.pixel_values,
                              pixels.dim()));
    }
  }

  // Prompt.
  std::optional<Tokenizer> tokenizer;
  const auto tok_path = std::filesystem::path(args.model) / "tokenizer.model";
  if (std::filesystem::exists(tok_path)) {
    auto tok = Tokenizer::load(tok_path);
    if (!tok) return fail(tok.error().to_string());
    tokenizer = std::move(tok).value();
  }
  std::vector<int64_t> ids;
  if (args.input_ids) {
    auto parsed = parse_ids(*args.input_ids);
    if (!parsed) return fail(parsed.error().to_string());
    ids = *parsed;
  } else {
    if (!tokenizer) {
      return fail(fmt::format("{} has no tokenizer.model: use --input-ids instead of --prompt", args.model));
    }
    const std::string text = llava_prompt_text(*args.prompt, pixels.defined());
    ids = tokenize_with_images(*tokenizer, text, config.image_token_index,
                               pixels.defined() ? config.image_tokens_per_image() * static_cast<int>(pixels.size(0)) : 0);
  }

  GenerateOptions gen;
  gen.max_new_tokens = args.max_new_tokens;
  gen.keep_prefill_logits = args.dump_logits.has_value();
  auto result = (*runner)->generate(ids, pixels, gen);
  if (!result) return fail(result.error().to_string());

  if (args.dump_logits) {
    auto st = write_safetensors(*args.dump_logits, {{"logits", result->prefill_logits}});
    if (!st) return fail(st.error().to_string());
  }
  std::string text;
  if (tokenizer) text = tokenizer->decode(result->generated);
  const double decode_steps = std::max<double>(1.0, static_cast<double>(result->generated.size()) - 1.0);
  if (args.format == "json") {
    nlohmann::json out = {
        {"model", args.model},
        {"dtype", args.dtype},
        {"device", args.device},
        {"prompt_tokens", result->prompt_tokens},
        {"input_ids", ids},
        {"generated", result->generated},
        {"timings",
         {{"load_ms", load_ms},
          {"prefill_ms", result->prefill_ms},
          {"decode_ms", result->decode_ms},
          {"decode_tokens_per_s", result->generated.size() > 1 ? decode_steps / (result->decode_ms / 1000.0) : 0.0}}},
    };
    if (tokenizer) out["text"] = text;
    std::cout << out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else if (tokenizer) {
    std::cout << text << "\n";
  } else {
    std::string joined;
    for (size_t i = 0; i < result->generated.size(); ++i) joined += fmt::format("{}{}", i ? "," : "", result->generated[i]);
    std::cout << joined << "\n";
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"adaptlink-run: LLaVA inference with libtorch"};
  app.require_subcommand(1);
  GenerateArgs g;
  auto* gen = app.add_subcommand("generate", "Greedy generation from a Hugging Face LLaVA checkpoint");
  gen->add_option("--model", g.model, "checkpoint directory (config.json, *.safetensors, ...)")->required();
  auto* prompt = gen->add_option("--prompt", g.prompt, "user prompt (LLaVA-1.5 template, needs tokenizer.model)");
  auto* ids = gen->add_option("--input-ids", g.input_ids, "comma-separated token ids (bypasses the tokenizer)");
  prompt->excludes(ids);
  auto* image = gen->add_option("--image", g.image, "image file (PNG, JPEG, ...)");
  auto* pv = gen->add_option("--pixel-values", g.pixel_values, "safetensors file with a 'pixel_values' tensor");
  image->excludes(pv);
  gen->add_option("--max-new-tokens", g.max_new_tokens, "tokens to generate at most (default 32)");
  gen->add_option("--stages", g.stages, "worker processes (only 1 in this build)");
  gen->add_option("--local-stages", g.local_stages, "run the model as K in-process stages (testing)")->group("");
  gen->add_option("--dtype", g.dtype, "fp32 | bf16 | fp16 (cuda)")->check(CLI::IsMember({"fp32", "bf16", "fp16"}));
  gen->add_option("--device", g.device, "cpu | cuda[:N]");
  gen->add_option("--format", g.format, "text | json")->check(CLI::IsMember({"text", "json"}));
  gen->add_option("--dump-logits", g.dump_logits, "write the prefill logits [tokens, vocab] to this safetensors file");
  gen->add_option("--threads", g.threads, "CPU threads (default: libtorch's)");
  if (auto done = adaptlink::cli::parse_args(app, argc, argv, "adaptlink-run")) return *done;
  if (gen->parsed()) {
    if (!g.prompt && !g.input_ids) return fail("generate needs --prompt or --input-ids");
    try {
      return run_generate(g);
    } catch (const std::exception& e) {
      // libtorch reports some input problems (e.g. out of memory) by exception.
      return fail(e.what());
    }
  }
  return 0;
}
