// A .pte program's logits for a file of images, computed by ExecuTorch's C++ runtime alone (no PyTorch).
//
// The runtime, kernel and XNNPACK libraries are the ones the executorch wheel ships for the target
// (executorch/lib, headers in executorch/include): a device's deployment links the same. The Python
// runtime cannot serve here on arm64: its extension links libtorch, and PyPI's arm64 torch build of the
// pinned version needs CUDA's libraries to load.
//
// Usage: pte_logits --cpu
//   prints the CPU the process runs on as the kernel hands it over: MIDR_EL1 (read through the
//   kernel's ID-register emulation, which HWCAP_CPUID announces) and the AT_HWCAP/AT_HWCAP2 words.
// Usage: pte_logits MODEL.pte IMAGES.f32 N OUT.f32
//   IMAGES.f32: N images as raw float32 in the method's input layout (its batch dimension aside);
//   the program's static batch is read from the method, the last partial batch is zero-padded.
//   OUT.f32: N rows of float32 logits. Prints "batch=B classes=K" on success.
#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

#include <sys/auxv.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <vector>

using executorch::extension::make_tensor_ptr;
using executorch::extension::Module;
using executorch::runtime::Error;

static int fail(const char* what) {
  std::fprintf(stderr, "pte_logits: %s\n", what);
  return 1;
}

static int print_cpu() {
  uint64_t midr = 0;
#if defined(__aarch64__)
  if (getauxval(AT_HWCAP) & HWCAP_CPUID) {
    asm volatile("mrs %0, midr_el1" : "=r"(midr));
  }
#endif
  std::printf("midr=0x%llx hwcap=0x%lx hwcap2=0x%lx cpus=%ld", static_cast<unsigned long long>(midr), getauxval(AT_HWCAP),
              getauxval(AT_HWCAP2), sysconf(_SC_NPROCESSORS_ONLN));
  // The vector lengths SVE and SME's streaming mode run at, in bytes (the kernels' tile sizes follow them).
#if defined(__aarch64__) && defined(PR_SVE_GET_VL) && defined(PR_SVE_VL_LEN_MASK)
  const int sve = prctl(PR_SVE_GET_VL);
  if (sve >= 0) {
    std::printf(" sve_vl_bytes=%d", sve & PR_SVE_VL_LEN_MASK);
  }
#endif
#if defined(__aarch64__) && defined(PR_SME_GET_VL) && defined(PR_SME_VL_LEN_MASK)
  const int sme = prctl(PR_SME_GET_VL);
  if (sme >= 0) {
    std::printf(" sme_vl_bytes=%d", sme & PR_SME_VL_LEN_MASK);
  }
#endif
  std::printf("\n");
  return 0;
}

int main(int argc, char** argv) {
  if (argc == 2 && std::strcmp(argv[1], "--cpu") == 0) {
    return print_cpu();
  }
  if (argc != 5) {
    return fail("usage: pte_logits MODEL.pte IMAGES.f32 N OUT.f32");
  }
  const long n = std::strtol(argv[3], nullptr, 10);
  Module module(argv[1], Module::LoadMode::Mmap);
  auto meta = module.method_meta("forward");
  if (!meta.ok()) {
    return fail("cannot read the program's forward method");
  }
  auto info = meta->input_tensor_meta(0);
  if (!info.ok()) {
    return fail("the forward method's first input is not a tensor");
  }
  std::vector<executorch::aten::SizesType> sizes(info->sizes().begin(), info->sizes().end());
  const long batch = sizes[0];
  long per_image = 1;
  for (size_t i = 1; i < sizes.size(); ++i) {
    per_image *= sizes[i];
  }
  std::vector<float> images(static_cast<size_t>(n * per_image));
  std::ifstream in(argv[2], std::ios::binary);
  if (!in.read(reinterpret_cast<char*>(images.data()), static_cast<std::streamsize>(images.size() * sizeof(float)))) {
    return fail("the images file holds fewer than N images of the method's input shape");
  }
  std::vector<float> logits;
  long classes = 0;
  std::vector<float> chunk(static_cast<size_t>(batch * per_image));
  for (long start = 0; start < n; start += batch) {
    const long count = std::min(batch, n - start);
    std::fill(chunk.begin(), chunk.end(), 0.0f);
    std::memcpy(chunk.data(), images.data() + start * per_image, static_cast<size_t>(count * per_image) * sizeof(float));
    auto tensor = make_tensor_ptr(sizes, chunk.data());
    auto out = module.forward(tensor);
    if (!out.ok()) {
      std::fprintf(stderr, "pte_logits: forward failed with error 0x%x\n", static_cast<unsigned>(out.error()));
      return 1;
    }
    const auto& t = out->at(0).toTensor();
    classes = t.numel() / batch;
    const float* data = t.const_data_ptr<float>();
    logits.insert(logits.end(), data, data + count * classes);
  }
  std::ofstream o(argv[4], std::ios::binary);
  o.write(reinterpret_cast<const char*>(logits.data()), static_cast<std::streamsize>(logits.size() * sizeof(float)));
  if (!o) {
    return fail("cannot write the logits file");
  }
  std::printf("batch=%ld classes=%ld\n", batch, classes);
  return 0;
}
