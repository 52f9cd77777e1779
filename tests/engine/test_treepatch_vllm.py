"""The in-process apply (manager/treepatch.py) against `git apply --cached` + `write-tree` on real vLLM
source: per-file diffs between releases (3, 1 and 0 lines of context, files alone and six at once), applied
onto the release they were made on and onto an older one (offsets, conflicts). Wherever treepatch answers,
its tree must be git's; where it leaves a diff to git, git decides as before.

Marker: `vllm` (the release repo from the package index, cached under $VPATCH_CACHE; ~15 s here).
"""
from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest

from test_series_part1 import part1_cache, release_repo  # noqa: F401 (fixtures)

from vpatch.manager import treepatch as tp
from vpatch.manager.git import CatFile, Git, ObjectStore


def _git(repo: Path, *args: str, input: bytes | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=repo, input=input, capture_output=True,
                          env={**os.environ, **(env or {})})


def _with_git(repo: Path, root: str, diff: bytes) -> str | None:
    env = {"GIT_INDEX_FILE": str(repo / "treepatch-test.idx")}
    assert _git(repo, "read-tree", root, env=env).returncode == 0
    if _git(repo, "apply", "--cached", "--whitespace=nowarn", "-", input=diff, env=env).returncode != 0:
        return None
    return _git(repo, "write-tree", env=env).stdout.decode().strip()


def _in_process(store: ObjectStore, root: str, diff: bytes) -> str | None:
    files = tp.parse(diff)
    return None if files is None else tp.apply_diff(store, root, files)


@pytest.mark.vllm
def test_in_process_apply_gives_gits_trees_on_vllm_release_diffs(release_repo, tmp_path):
    repo = tmp_path / "vllm.git"  # objects written here, never into the cached release repo
    assert _git(tmp_path, "clone", "-q", "--bare", "--shared", str(release_repo), str(repo)).returncode == 0
    g = Git(repo)
    rnd = random.Random(11)
    answered: dict[tuple[str, str], int] = {}
    with CatFile(g) as reader:
        store = ObjectStore(g, reader)
        for a, b, onto in (("v0.28.0", "v0.29.0", "v0.28.0"), ("v0.29.0", "v0.31.0", "v0.28.0")):
            root = g.tree_of(onto)
            names = _git(repo, "diff", "--no-renames", "--name-only", a, b).stdout.decode().split()
            names = rnd.sample(names, 40)
            for ctx in ("-U3", "-U1", "-U0"):
                answered[(onto + "<" + b, ctx)] = 0
                for group in [[n] for n in names] + [rnd.sample(names, 6) for _ in range(6)]:
                    diff = _git(repo, "diff", "--no-renames", "--full-index", ctx, a, b, "--", *group).stdout
                    got = _in_process(store, root, diff)
                    if got is None:
                        continue
                    assert got == _with_git(repo, root, diff), (a, b, onto, ctx, group)
                    answered[(onto + "<" + b, ctx)] += 1
    print("treepatch answers (of 46 diffs each):", answered)
    # the path is exercised: most diffs onto their own release are plain, -U0 and an older base far less
    assert answered[("v0.28.0<v0.29.0", "-U3")] >= 40, answered
    assert answered[("v0.28.0<v0.31.0", "-U3")] >= 1, answered
