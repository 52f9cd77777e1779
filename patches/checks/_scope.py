"""Shared by the effect checks: what each covers and cannot reach on CPU, and how it reports the outcome."""
from __future__ import annotations

import sys


def announce(name: str, covers: list[str], cannot: list[str]) -> None:
    print(f"{name}: effect check")
    print("covers:")
    for c in covers:
        print(f"  - {c}")
    print("cannot cover on CPU:")
    for c in cannot:
        print(f"  - {c}")
    sys.stdout.flush()


def verdict(failures: list[str], passed: str) -> int:
    """Print the outcome; exit status 0 (pass) or 1 (the effect is not there)."""
    if failures:
        print(f"FAIL ({len(failures)} problem(s)):")
        for f in failures:
            print(f"  - {f}")
        return 1
    print(f"PASS: {passed}")
    return 0
