"""Stand-in headers for compiling a whole vLLM ROCm source (csrc/rocm/skinny_gemms.cu) device-only
with Debian's hipcc, which has no torch and no ROCm >= 5.7 headers.

Each one gives only what the source's host code names (declared, never defined: a device-only build
parses host code and instantiates the kernels its launches name, nothing runs), or what vLLM's
hipify step turns the CUDA names into on ROCm. ``write_standins(dir)`` lays them out for ``-I dir``.
"""

from __future__ import annotations

from pathlib import Path

STANDINS: dict[str, str] = {
    "torch/all.h": r"""// Stand-in for <torch/all.h>: just the tensor API the HIP host wrappers of csrc/rocm use,
// declared (never defined). A device-only build parses the host code and instantiates the
// kernels its launches name; nothing here runs.
#pragma once
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>
#include <hip/hip_runtime.h>

namespace c10 {
struct Half { uint16_t x; };
struct BFloat16 { uint16_t x; };
struct Float8_e4m3fn { uint8_t x; };
struct Float8_e4m3fnuz { uint8_t x; };
enum class ScalarType { Byte, Char, Short, Int, Long, Half, Float, Double, BFloat16, Float8_e4m3fn,
                        Float8_e4m3fnuz };
struct Device { int index() const; };
struct IntArrayRef { size_t size() const; int64_t operator[](size_t) const; };
}  // namespace c10

namespace at {
using c10::Device;
using c10::ScalarType;
struct TensorOptions {
  TensorOptions dtype(ScalarType) const;
  TensorOptions device(Device) const;
};
class Tensor {
 public:
  int64_t size(int64_t dim) const;
  c10::IntArrayRef sizes() const;
  int64_t stride(int64_t dim) const;
  int64_t numel() const;
  int64_t dim() const;
  bool is_contiguous() const;
  ScalarType dtype() const;
  ScalarType scalar_type() const;
  Device device() const;
  TensorOptions options() const;
  Tensor detach() const;
  void* data_ptr() const;
  template <typename T>
  T* data_ptr() const;
};
Tensor empty(std::initializer_list<int64_t>, TensorOptions);
Tensor zeros(std::initializer_list<int64_t>, TensorOptions);
Tensor zeros(int64_t, TensorOptions);
std::optional<Device> device_of(const Tensor&);
}  // namespace at

namespace torch {
using at::Tensor;
using at::TensorOptions;
using at::empty;
using at::zeros;
constexpr at::ScalarType kFloat16 = at::ScalarType::Half;
constexpr at::ScalarType kBFloat16 = at::ScalarType::BFloat16;
constexpr at::ScalarType kFloat32 = at::ScalarType::Float;
constexpr at::ScalarType kFloat = at::ScalarType::Float;
constexpr at::ScalarType kInt32 = at::ScalarType::Int;
constexpr at::ScalarType kInt = at::ScalarType::Int;
constexpr at::ScalarType kUInt8 = at::ScalarType::Byte;
}  // namespace torch
using at::device_of;

#define TORCH_CHECK(cond, ...) \
  if (!(cond)) throw std::runtime_error(#cond)

// Both reduced float types, as ATen dispatches them.
#define AT_DISPATCH_REDUCED_FLOATING_TYPES(TYPE, NAME, ...)          \
  [&] {                                                              \
    switch (TYPE) {                                                  \
      case at::ScalarType::Half: {                                   \
        using scalar_t = c10::Half;                                  \
        return __VA_ARGS__();                                        \
      }                                                              \
      case at::ScalarType::BFloat16: {                               \
        using scalar_t = c10::BFloat16;                              \
        return __VA_ARGS__();                                        \
      }                                                              \
      default:                                                       \
        throw std::runtime_error(NAME);                              \
    }                                                                \
  }()
""",
    "ATen/cuda/CUDAContext.h": r"""// Stand-in for <ATen/cuda/CUDAContext.h> (see torch/all.h here).
#pragma once
#include <torch/all.h>
namespace at::cuda {
const hipDeviceProp_t* getCurrentDeviceProperties();
struct CUDAStream { operator hipStream_t() const; };
CUDAStream getCurrentCUDAStream();
}  // namespace at::cuda
""",
    "c10/cuda/CUDAGuard.h": r"""// Stand-in for <c10/cuda/CUDAGuard.h> (see torch/all.h here).
#pragma once
#include <torch/all.h>
namespace at::cuda {
struct OptionalCUDAGuard { explicit OptionalCUDAGuard(std::optional<c10::Device>); };
}  // namespace at::cuda
""",
    "dispatch_utils.h": r"""// Stand-in for vLLM's csrc/dispatch_utils.h: the FP8 dispatch over both ROCm FP8 formats.
#pragma once
#include <torch/all.h>
#define VLLM_DISPATCH_FP8_TYPES(TYPE, NAME, ...)                     \
  [&] {                                                              \
    switch (TYPE) {                                                  \
      case at::ScalarType::Float8_e4m3fn: {                          \
        using fp8_t = c10::Float8_e4m3fn;                            \
        return __VA_ARGS__();                                        \
      }                                                              \
      case at::ScalarType::Float8_e4m3fnuz: {                        \
        using fp8_t = c10::Float8_e4m3fnuz;                          \
        return __VA_ARGS__();                                        \
      }                                                              \
      default:                                                       \
        throw std::runtime_error(NAME);                              \
    }                                                                \
  }()
""",
    "quantization/w8a8/fp8/common.cuh": r"""// Stand-in for vLLM's csrc/quantization/w8a8/fp8/common.cuh: what csrc/rocm/skinny_gemms.cu
// takes from it (is_fp8_ocp); the FP8 conversions it also holds are not used there.
#pragma once
#include <ATen/cuda/CUDAContext.h>
static bool is_fp8_ocp() {
  std::string device_arch = at::cuda::getCurrentDeviceProperties()->gcnArchName;
  return device_arch.find("gfx94") == std::string::npos;
}
""",
    "cuda_runtime.h": r"""// Stand-in for what vLLM's hipify step makes of <cuda_runtime.h> and the cuda* names on ROCm.
#pragma once
#include <hip/hip_runtime.h>
typedef hipStream_t cudaStream_t;
#define cudaDeviceProp hipDeviceProp_t
#define cudaGetDevice hipGetDevice
#define cudaGetDeviceProperties hipGetDeviceProperties
""",
    "cuda_fp16.h": r"""// Stand-in for what hipify makes of <cuda_fp16.h> on ROCm.
#pragma once
#include <hip/hip_fp16.h>
""",
    "cuda_bf16.h": r"""// Stand-in for what hipify makes of <cuda_bf16.h> on ROCm (<hip/hip_bf16.h>, ROCm >= 5.7): Debian's
// HIP 5.2 has no __hip_bfloat16. The subset csrc/rocm/skinny_gemms.cu uses, written as ROCm's
// amd_hip_bf16.h does it: bf16 <-> fp32 by bits, round-to-nearest-even, arithmetic in fp32.
#pragma once
#include <hip/hip_runtime.h>
#include <hip/hip_fp16.h>

struct __hip_bfloat16 {
  unsigned short data;
};
struct __hip_bfloat162 {
  __hip_bfloat16 x, y;
};

__device__ __forceinline__ float __bfloat162float(__hip_bfloat16 a) {
  return __uint_as_float(static_cast<unsigned int>(a.data) << 16);
}
__device__ __forceinline__ __hip_bfloat16 __float2bfloat16(float f) {
  unsigned int u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return __hip_bfloat16{static_cast<unsigned short>((u >> 16) | 0x40)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return __hip_bfloat16{static_cast<unsigned short>(u >> 16)};
}
__device__ __forceinline__ float2 __bfloat1622float2(__hip_bfloat162 a) {
  return make_float2(__bfloat162float(a.x), __bfloat162float(a.y));
}
__device__ __forceinline__ __hip_bfloat162 __float22bfloat162_rn(float2 a) {
  return __hip_bfloat162{__float2bfloat16(a.x), __float2bfloat16(a.y)};
}
__device__ __forceinline__ __hip_bfloat162 __hmul2(__hip_bfloat162 a, __hip_bfloat162 b) {
  float2 fa = __bfloat1622float2(a), fb = __bfloat1622float2(b);
  return __float22bfloat162_rn(make_float2(fa.x * fb.x, fa.y * fb.y));
}
__device__ __forceinline__ __hip_bfloat162 __hfma2(__hip_bfloat162 a, __hip_bfloat162 b, __hip_bfloat162 c) {
  float2 fa = __bfloat1622float2(a), fb = __bfloat1622float2(b), fc = __bfloat1622float2(c);
  return __float22bfloat162_rn(make_float2(fmaf(fa.x, fb.x, fc.x), fmaf(fa.y, fb.y, fc.y)));
}
""",
}


def write_standins(dest: Path) -> Path:
    dest = Path(dest)
    for rel, text in STANDINS.items():
        p = dest / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if not p.is_file() or p.read_text() != text:
            p.write_text(text)
    return dest
