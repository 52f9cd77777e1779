// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: Copyright contributors to the vLLM project
//
// Launch configuration of the persistent MoE decode megakernel
// (moe_megakernel.cu). Host-only and torch-free, so it can be compiled and
// checked on any machine; each step of the fork's tuning is one edit here.
#pragma once

namespace vllm_moe_int4 {

struct MegaCfg {
  int thrds, ytile, wvprgrp, a_chunk, unrl;
};

// wave32, 2 rows per wave, 4 waves per workgroup, 16 k per lane per step.
constexpr MegaCfg kMegaCfg = {32, 2, 4, 16, 4};

}  // namespace vllm_moe_int4
