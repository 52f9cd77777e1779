"""Effect check for the `dense-wvsplitk-n1-tune` entry: one-row fp16/bf16 wvSplitK calls on gfx11
(the 152064x2048 lm_head, the 128x2048 router GEMVs) take the launch VLLM_BF16_SML_TUNE_IDX picks,
default 10 (4 waves, A_CHUNK 16, UNRL 4), and mindiv() no longer divides by zero for launches with
fewer than 13 waves per group.

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
    "csrc/rocm/wvsplitk_tune.h of the tree compiled with g++ and run: the configuration for "
    "VLLM_BF16_SML_TUNE_IDX unset, 0, 4, 7, 9, 10, 3 (not kept); which calls take the tuned launch "
    "(lm_head and router at 20 and 40 CUs, N = 1 vs 2, wave64)",
    "mindiv() cut out of the tree's csrc/rocm/skinny_gemms.cu and run for the tuned launch's 4 "
    "waves (the old code divides by zero there: SIGFPE)",
    "skinny_gemms.cu: wvSplitK's tile switch asks use_bf16_sml_tuned() first",
]
CANNOT = [
    "compiling skinny_gemms.cu itself (ROCm torch headers) and the GEMV's speed on gfx11",
]
TUNE = r'''
#include <cstdio>
#include "wvsplitk_tune.h"
using namespace vllm_wvsplitk;
int main() {
  const int i = bf16_sml_tune_idx();
  const auto c = bf16_sml_tune_cfg(i);
  std::printf("%d %d %d %d %d\n", i, c.ytile, c.wvprgrp, c.a_chunk, c.unrl);
  // (M, K, N, CuCount, wave32)
  const int shapes[][5] = {{152064, 2048, 1, 40, 1}, {152064, 2048, 1, 20, 1}, {128, 2048, 1, 20, 1},
                           {128, 2048, 1, 40, 1}, {152064, 2048, 2, 40, 1}, {152064, 2048, 1, 80, 0}};
  for (auto& s : shapes) {
    const int sYT = (s[0] + s[3] * 4 - 1) / (s[3] * 4);
    std::printf("%d ", (int)use_bf16_sml_tuned(s[2], s[4] != 0, sYT, s[1], s[0]));
  }
  std::printf("\n");
  return 0;
}
'''
TUNE_EXPECTED = {None: (10, 2, 4, 16, 4), "0": (0, 2, 16, 8, 2), "4": (4, 2, 8, 8, 8), "7": (7, 2, 4, 16, 2),
                 "9": (9, 2, 8, 16, 4), "10": (10, 2, 4, 16, 4), "3": (10, 2, 4, 16, 4)}
# lm_head@40, lm_head@20, router@20, router@40 (sYT == 1: untouched), N=2, wave64
TUNED_EXPECTED = [1, 1, 1, 0, 0, 0]
MINDIV = r'''
#include <cstdio>
%s
int main() {
  // wvSplitK's call for the tuned launch: mindiv(M_in, CuCount * YTILE, WvPrGrp = 4)
  std::printf("%%d %%d\n", mindiv(152064, 40 * 2, 4), mindiv(128, 20 * 2, 4));
  return 0;
}
'''


def main() -> int:
    announce("dense-wvsplitk-n1-tune", COVERS, CANNOT)
    rocm = rocm_sources()
    if rocm is None:
        return 2
    os.environ.pop("VLLM_BF16_SML_TUNE_IDX", None)
    failures: list[str] = []
    try:
        src = (rocm / "skinny_gemms.cu").read_text()
        m = re.search(r"^int mindiv\(int N, int div1, int div2\) \{.*?^\}", src, re.S | re.M)
        if not m:
            print("ERROR: no mindiv() in skinny_gemms.cu")
            return 2
        r = run_program(MINDIV % m.group(0), [])
        if r.returncode != 0:
            sig = -r.returncode if r.returncode < 0 else None
            why = "SIGFPE: integer division by zero" if sig == 8 else f"exit {r.returncode} {r.stderr[-300:]}"
            print(f"  mindiv(152064, 80, 4): {why}")
            failures.append(f"mindiv() with 4 waves per group fails ({why})")
        else:
            a, b = (int(x) for x in r.stdout.split())
            print(f"  mindiv(152064, 80, 4) = {a}, mindiv(128, 40, 4) = {b}")
            if not (1 <= a <= 4 and 1 <= b <= 4):
                failures.append(f"mindiv() with 4 waves returns {a}, {b} (expected 1..4)")
        header = rocm / "wvsplitk_tune.h"
        if not header.is_file():
            failures.append(f"no {header.name} in {rocm}: no tuned N=1 launch (no VLLM_BF16_SML_TUNE_IDX)")
            return verdict(failures, "")
        for value, want in TUNE_EXPECTED.items():
            r = run_program(TUNE, [rocm], env={"VLLM_BF16_SML_TUNE_IDX": value} if value else {})
            if r.returncode != 0:
                failures.append(f"the tune header does not compile/run: {r.stderr.strip()[-400:]}")
                break
            first, second = r.stdout.splitlines()
            got = tuple(int(x) for x in first.split())
            print(f"  VLLM_BF16_SML_TUNE_IDX={value or 'unset':5s} -> idx {got[0]}, YTILE {got[1]}, "
                  f"{got[2]} waves, A_CHUNK {got[3]}, UNRL {got[4]} (expected {want})")
            if got != want:
                failures.append(f"VLLM_BF16_SML_TUNE_IDX={value or 'unset'}: {got}, expected {want}")
            if value is None:
                tuned = [int(x) for x in second.split()]
                print(f"  tuned launch taken (lm_head@40CU, lm_head@20CU, router@20CU, router@40CU, "
                      f"N=2, wave64): {tuned} (expected {TUNED_EXPECTED})")
                if tuned != TUNED_EXPECTED:
                    failures.append(f"tuned-launch routing {tuned}, expected {TUNED_EXPECTED}")
        tile = re.search(r"#define WVSPLIT_TILE\(_sYT, __N\).*?use_bf16_sml_tuned", src, re.S)
        print(f"  wvSplitK's tile switch asks use_bf16_sml_tuned() first: {bool(tile)}")
        if not tile:
            failures.append("skinny_gemms.cu's WVSPLIT_TILE does not route through use_bf16_sml_tuned()")
    except Exception as e:
        traceback.print_exc()
        print(f"ERROR: the check crashed: {type(e).__name__}: {e}")
        return 2
    return verdict(failures, "one-row gfx11 GEMVs take the VLLM_BF16_SML_TUNE_IDX launch (default 10); "
                             "mindiv() is safe below 13 waves")


if __name__ == "__main__":
    sys.exit(main())
