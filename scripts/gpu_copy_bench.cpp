// GPU copy benchmark for scripts/gpu-check.sh: cudaMemcpyAsync host-to-device and
// device-to-host from the views of a pinned kvr region (KVR_REGION_PIN) against the same
// copies from unpinned memory, and kvr_tensors_read_into_device of a tensor file. Prints GB/s.
// Builds with nvcc or with a C++ compiler against the CUDA runtime (-lcudart).
#include <cuda_runtime.h>
#include <kvr.hpp>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

void cuda_check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "gpu_copy_bench: %s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}

constexpr std::size_t kChunk = 64ull << 20;  // one cudaMemcpyAsync

/// Best of `runs` passes over `bytes`, in GB/s: H2D (`to_device`) or D2H, in kChunk copies.
double copy_gbps(std::uint8_t* host, void* dev, std::size_t bytes, std::size_t dev_bytes,
                 bool to_device, int runs, cudaStream_t s) {
  cudaEvent_t a, b;
  cuda_check(cudaEventCreate(&a), "cudaEventCreate");
  cuda_check(cudaEventCreate(&b), "cudaEventCreate");
  double best = 0;
  for (int r = 0; r < runs; r++) {
    cuda_check(cudaEventRecord(a, s), "cudaEventRecord");
    for (std::size_t off = 0; off < bytes; off += kChunk) {
      std::size_t n = std::min(kChunk, bytes - off);
      auto* d = static_cast<std::uint8_t*>(dev) + (off % dev_bytes);
      cuda_check(to_device ? cudaMemcpyAsync(d, host + off, n, cudaMemcpyHostToDevice, s)
                           : cudaMemcpyAsync(host + off, d, n, cudaMemcpyDeviceToHost, s),
                 "cudaMemcpyAsync");
    }
    cuda_check(cudaEventRecord(b, s), "cudaEventRecord");
    cuda_check(cudaEventSynchronize(b), "cudaEventSynchronize");
    float ms = 0;
    cuda_check(cudaEventElapsedTime(&ms, a, b), "cudaEventElapsedTime");
    best = std::max(best, bytes / (ms * 1e6));
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  const std::size_t bytes = argc > 1 ? std::strtoull(argv[1], nullptr, 0) : (4ull << 30);
  const std::string dir = argc > 2 ? argv[2] : "/tmp";
  const std::string region_dir = argc > 3 ? argv[3] : "";  // empty: /dev/shm
  const int runs = 3;
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("skipped: no CUDA device\n");
    return 0;
  }
  cudaDeviceProp prop{};
  cuda_check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  std::printf("device 0: %s, %zu MiB\n", prop.name, prop.totalGlobalMem >> 20);
  const std::size_t dev_bytes = std::min<std::size_t>(bytes, 1ull << 30);
  void* dev = nullptr;
  cuda_check(cudaMalloc(&dev, dev_bytes), "cudaMalloc");
  cudaStream_t s;
  cuda_check(cudaStreamCreate(&s), "cudaStreamCreate");

  try {
    // A pinned region of `bytes`: 2 MiB blocks, one worker, whole-row view.
    kvr::RegionOptions o;
    o.name = "gpu_check_" + std::to_string(getpid());
    o.dir = region_dir;
    o.cpu_page_size = 2ull << 20;
    o.num_blocks = bytes / o.cpu_page_size;
    o.flags = KVR_REGION_CREATE | KVR_REGION_PIN;
    kvr::Region region(o);
    kvr::View rows = region.row_view();
    const std::size_t len = rows.num_blocks() * rows.row_stride();
    std::memset(rows.base(), 0x5a, len);
    std::printf("region %zu MiB, pinned: %s\n", len >> 20, region.info().pinned ? "yes" : "no");
    const double pin_h2d = copy_gbps(rows.base(), dev, len, dev_bytes, true, runs, s);
    const double pin_d2h = copy_gbps(rows.base(), dev, len, dev_bytes, false, runs, s);

    std::vector<std::uint8_t> plain(len, 0x5a);  // unpinned, faulted in
    const double un_h2d = copy_gbps(plain.data(), dev, len, dev_bytes, true, runs, s);
    const double un_d2h = copy_gbps(plain.data(), dev, len, dev_bytes, false, runs, s);
    std::printf("%-44s %8.2f GB/s\n", "H2D cudaMemcpyAsync, pinned region views", pin_h2d);
    std::printf("%-44s %8.2f GB/s\n", "H2D cudaMemcpyAsync, unpinned memory", un_h2d);
    std::printf("%-44s %8.2f GB/s\n", "D2H cudaMemcpyAsync, pinned region views", pin_d2h);
    std::printf("%-44s %8.2f GB/s\n", "D2H cudaMemcpyAsync, unpinned memory", un_d2h);

    // kvr_tensors_read_into_device of one tensor of dev_bytes (file in the page cache).
    const std::string path = dir + "/kvr_gpu_check_" + std::to_string(getpid()) + ".safetensors";
    const std::uint64_t shape[1] = {dev_bytes};
    kvr_tensor t{};
    t.name = "t";
    t.dtype = KVR_DTYPE_U8;
    t.rank = 1;
    t.shape = shape;
    t.data = plain.data();
    kvr::write_tensors(path, &t, 1, nullptr, 0, KVR_TENSORS_ALIGN_4K | KVR_TENSORS_NO_SYNC);
    kvr::TensorFile f(path);
    double best = 0;
    for (int r = 0; r < runs; r++) {
      std::size_t got = 0;
      auto t0 = std::chrono::steady_clock::now();
      kvr::check(kvr_tensors_read_into_device(f.get(), "t", reinterpret_cast<std::uint64_t>(dev),
                                              dev_bytes, 0, &got));
      double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      best = std::max(best, got / (sec * 1e9));
    }
    std::printf("%-44s %8.2f GB/s\n", "kvr_tensors_read_into_device (warm file)", best);
    unlink(path.c_str());
  } catch (const kvr::Error& e) {
    std::fprintf(stderr, "gpu_copy_bench: %s\n", e.what());
    return 1;
  }
  cudaFree(dev);
  return 0;
}
