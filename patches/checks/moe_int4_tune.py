"""Effect check for the `moe-int4-tune` entry: the N=1 launch of the fused MoE int4 GEMV comes from
VLLM_MOE_INT4_TUNE_IDX, default C2 (YTILE 2, 4 waves, A_CHUNK 16, UNRL 4), and the host wrapper's
N=1 dispatch goes through that selection.

Exit 0: pass; 1: fail; 2: the check could not run (no vLLM, no C++ compiler).
"""
from __future__ import annotations

import os
import re
import sys
import traceback

from _cxx import rocm_sources, run_program
from _scope import announce, verdict

COVERS = [
    "csrc/rocm/moe_wvsplitk_int4_tune.h of the tree compiled with g++ and run: the configuration "
    "chosen with VLLM_MOE_INT4_TUNE_IDX unset, 0, 1, 3, 5, 7 (not in the sweep) and 'x'",
    "csrc/rocm/moe_wvsplitk_int4.cu: the one-row case of the launch switch goes through "
    "moe_int4_tune_idx() and instantiates the kernel from moe_int4_tune_cfg",
]
CANNOT = [
    "compiling the host wrapper itself (it needs ROCm torch headers) and the kernel's speed on gfx11",
]
PROGRAM = r'''
#include <cstdio>
#include "moe_wvsplitk_int4_tune.h"
int main() {
  const int i = vllm_moe_int4::moe_int4_tune_idx();
  const auto c = vllm_moe_int4::moe_int4_tune_cfg(i);
  std::printf("%d %d %d %d %d\n", i, c.ytile, c.wvprgrp, c.a_chunk, c.unrl);
  return 0;
}
'''
EXPECTED = {  # value -> (idx, ytile, waves, a_chunk, unrl)
    None: (2, 2, 4, 16, 4), "0": (0, 2, 16, 16, 2), "1": (1, 2, 8, 16, 4), "3": (3, 2, 8, 16, 8),
    "5": (5, 4, 8, 16, 4), "7": (2, 2, 4, 16, 4), "x": (2, 2, 4, 16, 4),
}


def main() -> int:
    announce("moe-int4-tune", COVERS, CANNOT)
    rocm = rocm_sources()
    if rocm is None:
        return 2
    os.environ.pop("VLLM_MOE_INT4_TUNE_IDX", None)  # "unset" means unset
    failures: list[str] = []
    header = rocm / "moe_wvsplitk_int4_tune.h"
    if not header.is_file():
        return verdict([f"no {header.name} in {rocm}: the N=1 launch of the MoE int4 GEMV is fixed "
                        "(no VLLM_MOE_INT4_TUNE_IDX)"], "")
    try:
        for value, want in EXPECTED.items():
            env = {"VLLM_MOE_INT4_TUNE_IDX": value} if value is not None else {}
            r = run_program(PROGRAM, [rocm], env=env)
            if r.returncode != 0:
                failures.append(f"the tune header does not compile/run: {r.stderr.strip()[-400:]}")
                break
            got = tuple(int(x) for x in r.stdout.split())
            print(f"  VLLM_MOE_INT4_TUNE_IDX={value or 'unset':5s} -> idx {got[0]}, YTILE {got[1]}, "
                  f"{got[2]} waves, A_CHUNK {got[3]}, UNRL {got[4]} (expected {want})")
            if got != want:
                failures.append(f"VLLM_MOE_INT4_TUNE_IDX={value or 'unset'}: {got}, expected {want}")
        cu = (rocm / "moe_wvsplitk_int4.cu").read_text()
        n1 = re.search(r"case 1:\s*\\?\s*MOE_INT4_N1", cu)
        uses = "moe_int4_tune_idx()" in cu and "moe_int4_tune_cfg(" in cu
        print(f"  host wrapper: N=1 case routed through the tune switch: {bool(n1)}, "
              f"configs from moe_int4_tune_cfg: {uses}")
        if not (n1 and uses):
            failures.append("moe_wvsplitk_int4.cu does not route the N=1 launch through the tune table")
    except Exception as e:
        traceback.print_exc()
        print(f"ERROR: the check crashed: {type(e).__name__}: {e}")
        return 2
    return verdict(failures, "N=1 launches follow VLLM_MOE_INT4_TUNE_IDX, default C2")


if __name__ == "__main__":
    sys.exit(main())
