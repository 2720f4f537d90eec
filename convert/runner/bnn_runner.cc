// bnn_runner: runs a bnn bundle's .tflite with TensorFlow Lite + Larq Compute Engine kernels.
//
// Feeds either a raw little-endian float32 tensor (the bundle's test_input.bin, already
// normalized) or a binary PGM/PPM image (P5/P6, resized and normalized here like in training),
// prints latency and the top-k classes, and, with --expected, checks the output against the
// bundle's expected_output.bin (exit code 1 on mismatch).
//
// Only the public TFLite C++ API and LCE's RegisterLCECustomOps are used; it is compiled on the
// device against LCE's source tree (see CMakeLists.txt and build.sh).

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "larq_compute_engine/tflite/kernels/lce_ops_register.h"
#include "tensorflow/lite/interpreter.h"
#include "tensorflow/lite/kernels/register.h"
#include "tensorflow/lite/model.h"

namespace {

constexpr int kExitOk = 0;
constexpr int kExitMismatch = 1;
constexpr int kExitUsage = 2;

const char kUsage[] =
    "usage: bnn_runner --model=model.tflite [--input=test_input.bin|image.ppm|image.pgm]\n"
    "                  [--expected=expected_output.bin --atol=X] [--labels=labels.txt]\n"
    "                  [--mean=m1,m2,m3 --std=s1,s2,s3 --pixel_max=255] [--top_k=5]\n"
    "                  [--threads=1] [--runs=10] [--warmup=2]\n";

struct Options {
  std::string model, input, expected, labels;
  std::vector<float> mean, std;
  float atol = 1e-3f;
  float pixel_max = 255.0f;
  int top_k = 5, threads = 1, runs = 10, warmup = 2;
};

[[noreturn]] void Fail(const std::string& message) {
  std::cerr << "error: " << message << "\n";
  std::exit(kExitUsage);
}

std::vector<float> ParseFloats(const std::string& text) {
  std::vector<float> values;
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, ',')) values.push_back(std::stof(item));
  return values;
}

Options ParseArgs(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto eq = arg.find('=');
    if (arg.rfind("--", 0) != 0 || eq == std::string::npos) Fail("bad argument " + arg + "\n" + kUsage);
    const std::string key = arg.substr(2, eq - 2), value = arg.substr(eq + 1);
    try {
      if (key == "model") options.model = value;
      else if (key == "input") options.input = value;
      else if (key == "expected") options.expected = value;
      else if (key == "labels") options.labels = value;
      else if (key == "mean") options.mean = ParseFloats(value);
      else if (key == "std") options.std = ParseFloats(value);
      else if (key == "atol") options.atol = std::stof(value);
      else if (key == "pixel_max") options.pixel_max = std::stof(value);
      else if (key == "top_k") options.top_k = std::stoi(value);
      else if (key == "threads") options.threads = std::stoi(value);
      else if (key == "runs") options.runs = std::stoi(value);
      else if (key == "warmup") options.warmup = std::stoi(value);
      else Fail("unknown option --" + key + "\n" + kUsage);
    } catch (const std::exception&) {
      Fail("bad value in " + arg);
    }
  }
  if (options.model.empty()) Fail(std::string("--model is required\n") + kUsage);
  if (options.runs < 1 || options.threads < 1 || options.top_k < 1) Fail("runs, threads, top_k must be >= 1");
  return options;
}

std::vector<char> ReadFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) Fail("cannot open " + path);
  return std::vector<char>(std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>());
}

// Raw little-endian float32 (the host is little-endian: aarch64 Linux and x86).
std::vector<float> ReadFloats(const std::string& path, size_t count) {
  const std::vector<char> bytes = ReadFile(path);
  if (bytes.size() != count * sizeof(float)) {
    Fail(path + " has " + std::to_string(bytes.size()) + " bytes, expected " +
         std::to_string(count * sizeof(float)) + " (" + std::to_string(count) + " float32)");
  }
  std::vector<float> values(count);
  std::copy(bytes.begin(), bytes.end(), reinterpret_cast<char*>(values.data()));
  return values;
}

bool EndsWith(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Binary PGM (P5) or PPM (P6) with maxval <= 255 -> HxWxC float32 in 0..255.
std::vector<float> ReadNetpbm(const std::string& path, int* height, int* width, int* channels) {
  std::ifstream file(path, std::ios::binary);
  if (!file) Fail("cannot open " + path);
  std::string magic;
  file >> magic;
  if (magic != "P5" && magic != "P6") Fail(path + " is not a binary PGM (P5) or PPM (P6) image");
  *channels = magic == "P5" ? 1 : 3;
  int header[3];
  for (int& value : header) {
    file >> std::ws;
    while (file.peek() == '#') {  // comment lines between header fields
      std::string comment;
      std::getline(file, comment);
      file >> std::ws;
    }
    file >> value;
  }
  *width = header[0];
  *height = header[1];
  const int maxval = header[2];
  if (!file || *width < 1 || *height < 1 || maxval < 1 || maxval > 255) Fail(path + ": unsupported PGM/PPM header");
  file.get();  // the single whitespace byte before the pixels
  std::vector<unsigned char> pixels(static_cast<size_t>(*width) * *height * *channels);
  file.read(reinterpret_cast<char*>(pixels.data()), static_cast<std::streamsize>(pixels.size()));
  if (file.gcount() != static_cast<std::streamsize>(pixels.size())) Fail(path + " is truncated");
  std::vector<float> image(pixels.size());
  for (size_t i = 0; i < pixels.size(); ++i) image[i] = pixels[i] * (255.0f / maxval);
  return image;
}

// Bilinear resize with half-pixel centres (what tf.image.resize does in training).
std::vector<float> Resize(const std::vector<float>& in, int in_h, int in_w, int c, int out_h, int out_w) {
  std::vector<float> out(static_cast<size_t>(out_h) * out_w * c);
  const float sy = static_cast<float>(in_h) / out_h, sx = static_cast<float>(in_w) / out_w;
  for (int y = 0; y < out_h; ++y) {
    const float fy = std::min(std::max((y + 0.5f) * sy - 0.5f, 0.0f), static_cast<float>(in_h - 1));
    const int y0 = static_cast<int>(fy), y1 = std::min(y0 + 1, in_h - 1);
    const float wy = fy - y0;
    for (int x = 0; x < out_w; ++x) {
      const float fx = std::min(std::max((x + 0.5f) * sx - 0.5f, 0.0f), static_cast<float>(in_w - 1));
      const int x0 = static_cast<int>(fx), x1 = std::min(x0 + 1, in_w - 1);
      const float wx = fx - x0;
      for (int k = 0; k < c; ++k) {
        auto at = [&](int yy, int xx) { return in[(static_cast<size_t>(yy) * in_w + xx) * c + k]; };
        const float top = at(y0, x0) * (1 - wx) + at(y0, x1) * wx;
        const float bottom = at(y1, x0) * (1 - wx) + at(y1, x1) * wx;
        out[(static_cast<size_t>(y) * out_w + x) * c + k] = top * (1 - wy) + bottom * wy;
      }
    }
  }
  return out;
}

std::vector<float> LoadImage(const Options& options, int height, int width, int channels) {
  int in_h = 0, in_w = 0, in_c = 0;
  std::vector<float> image = ReadNetpbm(options.input, &in_h, &in_w, &in_c);
  if (in_c != channels) {  // gray -> RGB by repetition, RGB -> gray with ITU-R 601 luma
    std::vector<float> converted(static_cast<size_t>(in_h) * in_w * channels);
    for (size_t p = 0; p < static_cast<size_t>(in_h) * in_w; ++p) {
      if (channels == 3) {
        for (int k = 0; k < 3; ++k) converted[p * 3 + k] = image[p];
      } else {
        converted[p] = 0.2989f * image[p * 3] + 0.587f * image[p * 3 + 1] + 0.114f * image[p * 3 + 2];
      }
    }
    image.swap(converted);
  }
  image = Resize(image, in_h, in_w, channels, height, width);
  if (options.mean.size() != static_cast<size_t>(channels) || options.std.size() != static_cast<size_t>(channels)) {
    Fail("--mean and --std need one value per input channel for image input");
  }
  for (size_t i = 0; i < image.size(); ++i) {
    const size_t k = i % channels;
    image[i] = (image[i] * (options.pixel_max / 255.0f) - options.mean[k]) / options.std[k];
  }
  return image;
}

std::vector<std::string> ReadLabels(const std::string& path) {
  std::vector<std::string> labels;
  if (path.empty()) return labels;
  std::ifstream file(path);
  if (!file) Fail("cannot open " + path);
  for (std::string line; std::getline(file, line);) labels.push_back(line);
  return labels;
}

}  // namespace

int main(int argc, char** argv) {
  const Options options = ParseArgs(argc, argv);

  std::unique_ptr<tflite::FlatBufferModel> model = tflite::FlatBufferModel::BuildFromFile(options.model.c_str());
  if (!model) Fail("cannot load " + options.model + " as a TFLite model");
  tflite::ops::builtin::BuiltinOpResolver resolver;
  compute_engine::tflite::RegisterLCECustomOps(&resolver);
  std::unique_ptr<tflite::Interpreter> interpreter;
  if (tflite::InterpreterBuilder(*model, resolver)(&interpreter) != kTfLiteOk || !interpreter) {
    Fail("cannot build an interpreter for " + options.model);
  }
  interpreter->SetNumThreads(options.threads);
  if (interpreter->AllocateTensors() != kTfLiteOk) Fail("cannot allocate tensors");
  if (interpreter->inputs().size() != 1 || interpreter->outputs().size() != 1) Fail("expected one input and one output");

  const TfLiteTensor* input = interpreter->input_tensor(0);
  const TfLiteTensor* output = interpreter->output_tensor(0);
  if (input->type != kTfLiteFloat32 || output->type != kTfLiteFloat32) Fail("expected float32 input and output");
  if (input->dims->size != 4) Fail("expected an NHWC image input");
  const int height = input->dims->data[1], width = input->dims->data[2], channels = input->dims->data[3];
  const size_t input_count = input->bytes / sizeof(float), output_count = output->bytes / sizeof(float);

  std::vector<float> x;
  if (options.input.empty()) {
    x.assign(input_count, 0.0f);  // latency only
  } else if (EndsWith(options.input, ".pgm") || EndsWith(options.input, ".ppm")) {
    x = LoadImage(options, height, width, channels);
  } else {
    x = ReadFloats(options.input, input_count);
  }
  std::copy(x.begin(), x.end(), interpreter->typed_input_tensor<float>(0));

  for (int i = 0; i < options.warmup; ++i) {
    if (interpreter->Invoke() != kTfLiteOk) Fail("inference failed");
  }
  std::vector<double> ms;
  for (int i = 0; i < options.runs; ++i) {
    const auto start = std::chrono::steady_clock::now();
    if (interpreter->Invoke() != kTfLiteOk) Fail("inference failed");
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  std::vector<double> sorted = ms;
  std::sort(sorted.begin(), sorted.end());
  std::printf("latency over %d runs, %d thread(s): min %.3f ms, median %.3f ms, mean %.3f ms\n", options.runs,
              options.threads, sorted.front(), sorted[sorted.size() / 2],
              std::accumulate(ms.begin(), ms.end(), 0.0) / ms.size());

  const float* y = interpreter->typed_output_tensor<float>(0);
  const std::vector<std::string> labels = ReadLabels(options.labels);
  std::vector<int> order(output_count);
  std::iota(order.begin(), order.end(), 0);
  const int k = std::min<int>(options.top_k, static_cast<int>(output_count));
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [y](int a, int b) { return y[a] > y[b]; });
  for (int i = 0; i < k; ++i) {
    const int c = order[i];
    const std::string name = c < static_cast<int>(labels.size()) ? labels[c] : std::to_string(c);
    std::printf("top-%d: %s (class %d) %.6f\n", i + 1, name.c_str(), c, y[c]);
  }

  if (options.expected.empty()) return kExitOk;
  const std::vector<float> expected = ReadFloats(options.expected, output_count);
  double max_diff = 0.0;
  for (size_t i = 0; i < output_count; ++i) max_diff = std::max(max_diff, std::fabs(static_cast<double>(y[i]) - expected[i]));
  const int expected_top1 = static_cast<int>(std::max_element(expected.begin(), expected.end()) - expected.begin());
  const bool ok = max_diff <= options.atol && expected_top1 == order[0];
  std::printf("self-check: max |output - expected| = %.3g (atol %.3g), top-1 %d vs expected %d: %s\n", max_diff,
              options.atol, order[0], expected_top1, ok ? "PASSED" : "FAILED");
  return ok ? kExitOk : kExitMismatch;
}
