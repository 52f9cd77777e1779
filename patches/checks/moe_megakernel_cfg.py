"""Effect check for the MoE megakernel's tuning entries: the launch configuration the host wrapper
uses (csrc/rocm/moe_megakernel_cfg.h, compiled with g++ and read back) has at least the wave count
and the A_CHUNK the entry sets, and moe_megakernel.cu launches with it.

  moe_megakernel_cfg.py --min-waves 8            (moe-megakernel-waves-8)
  moe_megakernel_cfg.py --min-waves 16 --a-chunk 32

Exit 0: pass; 1: fail; 2: the check could not run (no vLLM, no C++ compiler).
"""
from __future__ import annotations

import argparse
import sys

from _cxx import rocm_sources, run_program
from _scope import announce, verdict

COVERS = [
    "csrc/rocm/moe_megakernel_cfg.h of the tree compiled with g++ and run: threads, rows per wave, "
    "waves per workgroup, A_CHUNK and UNRL of the megakernel's launch",
    "csrc/rocm/moe_megakernel.cu takes its launch constants from that configuration",
]
CANNOT = [
    "the megakernel's speed on gfx11 (the TPOT claims, measured by validate with the gate on) and "
    "compiling the host wrapper itself (ROCm torch headers)",
]
PROGRAM = r'''
#include <cstdio>
#include "moe_megakernel_cfg.h"
int main() {
  constexpr auto c = vllm_moe_int4::kMegaCfg;
  std::printf("%d %d %d %d %d\n", c.thrds, c.ytile, c.wvprgrp, c.a_chunk, c.unrl);
  return 0;
}
'''


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--min-waves", type=int, default=4)
    ap.add_argument("--a-chunk", type=int, default=None)
    a = ap.parse_args(argv)
    announce(f"moe-megakernel launch (waves >= {a.min_waves}"
             + (f", A_CHUNK {a.a_chunk}" if a.a_chunk else "") + ")", COVERS, CANNOT)
    rocm = rocm_sources()
    if rocm is None:
        return 2
    if not (rocm / "moe_megakernel_cfg.h").is_file():
        return verdict([f"no moe_megakernel_cfg.h in {rocm}: the megakernel is not in this tree"], "")
    r = run_program(PROGRAM, [rocm])
    if r.returncode != 0:
        return verdict([f"moe_megakernel_cfg.h does not compile: {r.stderr.strip()[-400:]}"], "")
    thrds, ytile, waves, a_chunk, unrl = (int(x) for x in r.stdout.split())
    print(f"  launch: {thrds} threads per wave, YTILE {ytile}, {waves} waves per workgroup, "
          f"A_CHUNK {a_chunk}, UNRL {unrl}")
    failures = []
    if waves < a.min_waves:
        failures.append(f"{waves} waves per workgroup, this entry sets {a.min_waves}")
    if a.a_chunk and a_chunk != a.a_chunk:
        failures.append(f"A_CHUNK {a_chunk}, this entry sets {a.a_chunk}")
    cu = (rocm / "moe_megakernel.cu").read_text()
    used = "vllm_moe_int4::kMegaCfg" in cu and "WVPRGRP = cfg.wvprgrp" in cu
    print(f"  moe_megakernel.cu launches with kMegaCfg: {used}")
    if not used:
        failures.append("moe_megakernel.cu does not take its launch from moe_megakernel_cfg.h")
    return verdict(failures, f"the megakernel launches {waves} waves per workgroup, A_CHUNK {a_chunk}")


if __name__ == "__main__":
    sys.exit(main())
