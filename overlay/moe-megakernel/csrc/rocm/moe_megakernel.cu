// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: Copyright contributors to the vLLM project
//
// Host wrapper of the persistent MoE decode megakernel (moe_megakernel.cuh).
// Gated in Python by VLLM_MOE_HIP_MEGAKERNEL=1 (off by default).
#include <torch/all.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "moe_megakernel.cuh"
#include "moe_megakernel_cfg.h"

namespace {
template <typename T>
struct mega_type {
  using type = __half;
};
template <>
struct mega_type<c10::BFloat16> {
  using type = vllm_moe_int4::bf16_t;
};
}  // namespace

// out[0, :] = sum_j topk_weights[0, j] * (act_j @ dequant(w2_q[topk_ids[0, j]])^T)
// act: [top_k, K] (already activated) or [top_k, 2K] gate|up with fuse_silu.
// w2_q: [E, M, K/8] int32 skinny shuffled, w2_scales: [E, M, K/G].
void moe_megakernel_gemm2(const at::Tensor& act, at::Tensor& out,
                          const at::Tensor& w2_q, const at::Tensor& w2_scales,
                          const at::Tensor& topk_ids,
                          const at::Tensor& topk_weights, int64_t group_size,
                          bool fuse_silu, int64_t CuCount) {
  TORCH_CHECK(topk_ids.numel() == act.size(0) && out.size(0) == 1,
              "moe_megakernel_gemm2 is an M = 1 decode kernel");
  TORCH_CHECK(topk_ids.scalar_type() == at::kInt &&
                  topk_weights.scalar_type() == at::kFloat,
              "topk_ids int32, topk_weights float32");
  TORCH_CHECK(act.is_contiguous() && out.is_contiguous() &&
                  w2_q.is_contiguous() && w2_scales.is_contiguous() &&
                  topk_ids.is_contiguous() && topk_weights.is_contiguous(),
              "contiguous tensors required");
  const int64_t top_k = topk_ids.numel();
  const int64_t K = fuse_silu ? act.size(1) / 2 : act.size(1);
  const int64_t M = w2_q.size(1);
  TORCH_CHECK(w2_q.size(2) * 8 == K && out.size(1) == M, "shape mismatch");
  TORCH_CHECK(group_size == 32 || group_size == 64 || group_size == 128,
              "group_size must be 32, 64 or 128");
  TORCH_CHECK(K % 32 == 0 && M % 2 == 0, "K % 32 and M % 2 required");

  constexpr auto cfg = vllm_moe_int4::kMegaCfg;
  constexpr int THRDS = cfg.thrds, YTILE = cfg.ytile, WVPRGRP = cfg.wvprgrp,
                A_CHUNK = cfg.a_chunk, UNRL = cfg.unrl;
  constexpr int LDS_ELEMS = 8192;
  TORCH_CHECK(K <= LDS_ELEMS, "K exceeds the LDS activation slab");
  // Grow the grid until one workgroup's partials fit in LDS.
  int64_t grid = CuCount;
  auto per_block_m = [&](int64_t g) {
    const int64_t stride = g * WVPRGRP * YTILE;
    return (M + stride - 1) / stride * WVPRGRP * YTILE;
  };
  while (per_block_m(grid) * top_k >
         vllm_moe_int4::MEGA_PARTIAL_LDS_FLOATS)
    grid *= 2;

  const at::cuda::OptionalCUDAGuard device_guard(device_of(act));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const dim3 block(THRDS, WVPRGRP);

#define MEGA_LAUNCH(_GS, _SILU)                                              \
  vllm_moe_int4::moe_megakernel_gemm2_reduce<T, THRDS, YTILE, WVPRGRP,       \
                                             A_CHUNK, UNRL, _GS, LDS_ELEMS,  \
                                             _SILU>                          \
      <<<dim3(grid), block, 0, stream>>>(                                    \
          K, M, reinterpret_cast<const uint32_t*>(w2_q.data_ptr()),          \
          reinterpret_cast<const T*>(act.data_ptr()),                        \
          reinterpret_cast<const T*>(w2_scales.data_ptr()),                  \
          topk_ids.data_ptr<int32_t>(), topk_weights.data_ptr<float>(),      \
          reinterpret_cast<T*>(out.data_ptr()), (int)top_k);
#define MEGA_GS(_SILU)            \
  if (group_size == 32) {         \
    MEGA_LAUNCH(32, _SILU)        \
  } else if (group_size == 64) {  \
    MEGA_LAUNCH(64, _SILU)        \
  } else {                        \
    MEGA_LAUNCH(128, _SILU)       \
  }

  AT_DISPATCH_REDUCED_FLOATING_TYPES(
      act.scalar_type(), "moe_megakernel_gemm2", [&] {
        using T = typename mega_type<scalar_t>::type;
        if (fuse_silu) {
          MEGA_GS(true)
        } else {
          MEGA_GS(false)
        }
      });
#undef MEGA_GS
#undef MEGA_LAUNCH
}
