"""Shared by the effect checks: every check first says what it covers and what CPU cannot reach."""
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
