"""The bisect's measuring oracle stores each sample under the tree it measured.

Found on the CPU-engine nightly (2026-12-03): on the cpu target a position is measured in its cpu build (a
venv folder under .vpatch/builds/), not in a checkout; the upstream bisect's positions carry no tree of their
own, so every sample failed to store ("a result needs a tree hash"). And asking git from inside that folder
answers for the fork's own repository when the fork is one."""
from __future__ import annotations

import sqlite3
import sys

from conftest import git

from vpatch.manager.prefixes import Prefix
from vpatch.validation.bisect_run import SeriesOracle
from vpatch.validation.measure import CommandMeasurer
from vpatch.validation.store import open_store


def test_samples_are_stored_under_the_measured_tree_not_the_fork_repositorys(tmp_path):
    fork = tmp_path / "fork"
    fork.mkdir()
    git(fork, "init", "-q")
    (fork / "README").write_text("the fork\n")
    git(fork, "add", "README")
    git(fork, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "fork")
    fork_tree = git(fork, "rev-parse", "HEAD^{tree}")
    build = fork / ".vpatch" / "builds" / "cpu" / "t" / "venv"  # a cpu build: no checkout, inside the fork repo
    build.mkdir(parents=True)
    positions = [Prefix(0, None, "c0", "a" * 40),  # a series prefix knows its tree
                 Prefix(1, None, "c1", "")]       # an upstream position: the series applied on an upstream commit
    store_path = tmp_path / "results.sqlite"
    store = open_store(store_path)
    oracle = SeriesOracle(positions, lambda p: build, CommandMeasurer("ms", f"{sys.executable} -c 'print(1.5)'", runs_per_boot=1),
                          store, "v1.0.0", lambda p: p.commit,
                          engine=lambda p: {"tree": "b" * 40} if p.position == 1 else {})
    assert oracle.measure(0, 2) == [1.5, 1.5]
    assert oracle.measure(1, 1) == [1.5]
    store.close()
    with sqlite3.connect(store_path) as db:
        trees = dict(db.execute("SELECT prefix_index, tree FROM samples GROUP BY prefix_index"))
    assert trees == {0: "a" * 40, 1: "b" * 40} and fork_tree not in trees.values()
