// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: Copyright contributors to the vLLM project
//
// Persistent MoE decode megakernel (M = 1 token): GEMM2 + top-k weighted
// un-permute in one launch. Device code only, no torch headers (the host
// wrapper is moe_megakernel.cu), so it can be built device-only for gfx11.
//
//   for slot in [0, top_k) with topk_ids[slot] >= 0:   (inside the kernel)
//     stage act[slot] in LDS (optionally silu(gate) * up on the fly)
//     for m in this workgroup's m-stripe:
//       part[slot][m] = act[slot] . dequant(W2[topk_ids[slot], m, :])
//   out[m] = sum over those slots of topk_weights[slot] * part[slot][m]
//
// Each workgroup owns a disjoint m-stripe (m steps by gridDim.x * WvPrGrp *
// YTILE and workgroups differ only in blockIdx.x), so the per-slot partials
// stay in LDS and are reduced in place: no HBM scratch, no grid barrier.
#pragma once

#include "moe_wvsplitk_int4.cuh"

namespace vllm_moe_int4 {

// Per-workgroup partial slab: top_k * per-block m-rows floats (8 KB).
constexpr int MEGA_PARTIAL_LDS_FLOATS = 2048;

// (128 + q) - 136 for a packed pair of dequantised bf16 weights: each half
// widened to fp32, subtracted and rounded back to bf16 (round half to even by
// hand). The results are integers in -8..7, never a NaN, so there is no NaN
// test (what __hsub2 would add on gfx11).
__device__ __forceinline__ uint32_t bf16x2_dequant_sub_finite(uint32_t a,
                                                              uint32_t b) {
  const uint32_t lo = __float_as_uint(bf16_lo(a) - bf16_lo(b));
  const uint32_t hi = __float_as_uint(bf16_hi(a) - bf16_hi(b));
  return ((lo + 0x7FFFu + ((lo >> 16) & 1u)) >> 16) |
         ((hi + 0x7FFFu + ((hi >> 16) & 1u)) & 0xFFFF0000u);
}

// The megakernel's chunk dot: fp16 as the GEMV's int4_chunk_dot; bf16 with
// the 128 + 8 offset subtracted from each (128 + q) pair before the dot.
template <typename scalar_t, int A_CHUNK>
__device__ __forceinline__ float mega_chunk_dot(const uint32_t* a,
                                                const uint32_t* w) {
  if constexpr (std::is_same_v<scalar_t, __half>) {
    return int4_chunk_dot<scalar_t, A_CHUNK>(a, w, 0.0f);
  } else {
    constexpr uint32_t MAGIC = 0x43004300u;  // bf16 (128, 128)
    constexpr uint32_t BIAS = 0x43084308u;   // bf16 (136, 136)
    float partial = 0.0f;
#pragma unroll
    for (int i = 0; i < A_CHUNK / 8; i++) {
      uint32_t q = w[i];
#pragma unroll
      for (int j = 0; j < 4; j++) {
        const uint32_t d =
            bf16x2_dequant_sub_finite((q & 0x000F000Fu) | MAGIC, BIAS);
        partial = dot2_bf16(a[i * 4 + j], d, partial);
        q >>= 4;
      }
    }
    return partial;
  }
}

template <typename scalar_t, int THRDS, int YTILE, int WvPrGrp, int A_CHUNK,
          int UNRL, int GROUP_SIZE, int LDS_ELEMS, bool FUSE_SILU>
__global__ void __launch_bounds__(WvPrGrp* THRDS)
    moe_megakernel_gemm2_reduce(const int K, const int M,
                                const uint32_t* __restrict__ B,
                                const scalar_t* __restrict__ act,
                                const scalar_t* __restrict__ scale,
                                const int32_t* __restrict__ topk_ids,
                                const float* __restrict__ topk_weights,
                                scalar_t* __restrict__ out, const int top_k) {
  static_assert(GROUP_SIZE % A_CHUNK == 0, "a chunk must not straddle groups");
  __shared__ __attribute__((aligned(16))) scalar_t s[LDS_ELEMS];
  __shared__ float part[MEGA_PARTIAL_LDS_FLOATS];

  constexpr int ROWS_PER_ITER = WvPrGrp * YTILE;
  const int stride = gridDim.x * ROWS_PER_ITER;
  const int iters = (M + stride - 1) / stride;
  const int per_block_m = iters * ROWS_PER_ITER;
  const int tid = threadIdx.y * THRDS + threadIdx.x;
  constexpr int KW = A_CHUNK / 8;
  const int Kw = K / 8;
  const int num_groups = K / GROUP_SIZE;

  for (int slot = 0; slot < top_k; slot++) {
    // -1: the expert is not on this rank (expert parallel, mapped by the
    // caller through expert_map); the slot adds nothing. Uniform per block.
    const int expert = topk_ids[slot];
    if (expert < 0) continue;
    __syncthreads();  // the previous slot is done reading s
    if constexpr (FUSE_SILU) {
      // act is [top_k, 2K] gate|up; every thread of the block takes part
      // (a chunked layout would leave most of them idle), and the divide is
      // a single v_rcp_f32.
      const scalar_t* g_row = act + (size_t)slot * 2 * K;
      for (int k = tid; k < K; k += THRDS * WvPrGrp) {
        const float g = num<scalar_t>::to_f(g_row[k]);
        const float u = num<scalar_t>::to_f(g_row[K + k]);
        s[k] = num<scalar_t>::from_f(
            g * __builtin_amdgcn_rcpf(1.0f + __expf(-g)) * u);
      }
    } else {
      const scalar_t* row = act + (size_t)slot * K;
      for (int k = tid * A_CHUNK; k < K; k += THRDS * WvPrGrp * A_CHUNK) {
#pragma unroll
        for (int i = 0; i < A_CHUNK * (int)sizeof(scalar_t) / 16; i++)
          ((u32x4_t*)&s[k])[i] = ((const u32x4_t*)&row[k])[i];
      }
    }
    __syncthreads();

    const uint32_t* Be = B + (size_t)expert * M * Kw;
    const scalar_t* Se = scale + (size_t)expert * M * num_groups;
    int it = 0;
    for (int m = (blockIdx.x * WvPrGrp + threadIdx.y) * YTILE; m < M;
         m += stride, it++) {
      float sum[YTILE];
#pragma unroll
      for (int y = 0; y < YTILE; y++) sum[y] = 0.0f;
      for (int k1 = 0; k1 < K; k1 += THRDS * A_CHUNK * UNRL) {
        uint32_t w[UNRL][YTILE][KW];
#pragma unroll
        for (int k2 = 0; k2 < UNRL; k2++) {
          const int k_ = k1 + k2 * THRDS * A_CHUNK + threadIdx.x * A_CHUNK;
          if (k_ < K) {
#pragma unroll
            for (int y = 0; y < YTILE; y++)
              load_w_chunk<A_CHUNK>(&Be[(size_t)(m + y) * Kw + k_ / 8],
                                    w[k2][y]);
          }
        }
#pragma unroll
        for (int k2 = 0; k2 < UNRL; k2++) {
          const int k_ = k1 + k2 * THRDS * A_CHUNK + threadIdx.x * A_CHUNK;
          if (k_ >= K) break;
          uint32_t a[A_CHUNK / 2];
          const u32x4_t* as = (const u32x4_t*)(&s[k_]);
#pragma unroll
          for (int i = 0; i < A_CHUNK / 8; i++) {
            u32x4_t v = as[i];
            a[i * 4 + 0] = v.x;
            a[i * 4 + 1] = v.y;
            a[i * 4 + 2] = v.z;
            a[i * 4 + 3] = v.w;
          }
          const int g = k_ / GROUP_SIZE;
#pragma unroll
          for (int y = 0; y < YTILE; y++)
            sum[y] += num<scalar_t>::to_f(Se[(m + y) * num_groups + g]) *
                      mega_chunk_dot<scalar_t, A_CHUNK>(a, w[k2][y]);
        }
      }
#pragma unroll
      for (int y = 0; y < YTILE; y++) sum[y] = wave32_sum(sum[y]);
      if (threadIdx.x == THRDS - 1) {
#pragma unroll
        for (int y = 0; y < YTILE; y++)
          part[slot * per_block_m + (it * WvPrGrp + threadIdx.y) * YTILE + y] =
              sum[y];
      }
    }
  }
  __syncthreads();

  // Top-k weighted reduce of this workgroup's stripe, in place.
  for (int local = tid; local < per_block_m; local += THRDS * WvPrGrp) {
    const int it = local / ROWS_PER_ITER;
    const int m = (it * gridDim.x + blockIdx.x) * ROWS_PER_ITER +
                  (local - it * ROWS_PER_ITER);
    if (m >= M) continue;
    float acc = 0.0f;
    for (int slot = 0; slot < top_k; slot++)
      if (topk_ids[slot] >= 0)
        acc += topk_weights[slot] * part[slot * per_block_m + local];
    out[m] = num<scalar_t>::from_f(acc);
  }
}

}  // namespace vllm_moe_int4
