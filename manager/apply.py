"""Apply the series onto the base, one commit per entry, stopping resumably at the first conflict.

The planner (:func:`plan`) is pure: given the series, the base and what the workspace already
holds, it decides which commits to keep and which entries are still to do. The engine
(:func:`run_operation`) then works through the to-do list, saving the operation's state after every
entry, so ``continue``, ``skip`` and ``abort`` work after a conflict *and* after a crash or ``kill -9``.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

from . import atomic, output
from .entries import IndexOnly, Outcome, apply_overlay_entry, apply_patch_entry, commit, patch_message
from .errors import StoppedForConflict, WorkspaceError
from .git import CatFile, Git, run_git
from .state import StateError
from .series import Entry, Series, merged_at_or_before
from .sources import resolve_source
from .workspace import BASE_REF, NEW_DIR, AppliedCommit, Workspace, branch_for, entry_digest




@dataclass
class Plan:
    keep: list[str] = field(default_factory=list)          # entry ids whose commits stay as they are
    todo: list[str] = field(default_factory=list)          # entry ids to apply, in order
    merged: dict[str, str] = field(default_factory=dict)   # entry id -> why it is left out
    skipped: dict[str, str] = field(default_factory=dict)  # entry id -> recorded skip reason
    keep_head: str | None = None                           # commit the branch should end at before todo
    diverged: str | None = None                            # why the branch cannot be reused


def plan(entries: tuple[Entry, ...], base: str, applied: list[AppliedCommit], skipped: dict[str, str],
         digests: dict[str, str], base_commit: str, synced: frozenset[str] = frozenset()) -> Plan:
    """Decide what to keep and what to apply (pure).

    A commit is kept when it names the expected entry and either carries the entry's current digest or
    is known to hold the same content (``synced``: e.g. after `vpatch refresh` rewrote the file)."""
    p = Plan(keep_head=base_commit)
    pending = []
    for e in entries:
        if merged_at_or_before(e, base):
            p.merged[e.id] = f"merged upstream in {e.upstream.version} (base is {base})"
        else:
            pending.append(e)
    i = 0
    for e in pending:
        if e.id in skipped:
            p.skipped[e.id] = skipped[e.id]
            continue
        if i < len(applied):
            c = applied[i]
            if c.entry_id != e.id:
                what = f"entry {c.entry_id}" if c.entry_id else "no entry (no Vpatch-Entry trailer)"
                p.diverged = f"commit {c.sha[:10]} ({c.subject!r}) is {what} where the series has {e.id}"
                return p
            if c.digest != digests[e.id] and c.sha not in synced:
                p.diverged = f"entry {e.id} changed since it was applied (commit {c.sha[:10]})"
                return p
            p.keep.append(e.id)
            p.keep_head = c.sha
            i += 1
        else:
            p.todo.append(e.id)
    for c in applied[i:]:
        if c.entry_id is None or c.entry_id not in digests or (c.digest != digests.get(c.entry_id) and c.sha not in synced):
            p.diverged = f"commit {c.sha[:10]} ({c.subject!r}) beyond the requested entries is not in sync with the series"
            return p
    return p


def _digests(series: Series, entries) -> dict[str, str]:
    pd = series.path.resolve().parent
    return {e.id: entry_digest(e, pd, pd.parent / "overlay") for e in entries}


def _synced(ws: Workspace, series: Series, applied: list[AppliedCommit], digests: dict[str, str]) -> frozenset[str]:
    from .sync import commit_matches_entry

    pd = series.path.resolve().parent
    known = {e.id: e for e in series.entries}
    return frozenset(c.sha for c in applied if c.entry_id in digests and c.digest != digests[c.entry_id]
                     and commit_matches_entry(ws, c, known[c.entry_id], pd, pd.parent / "overlay"))


def start_apply(ctx, series: Series, *, base: str | None, source: str | None, upto: str | None,
                reset: bool, op_extra: dict | None = None, prepare=None) -> dict:
    """``op_extra`` (e.g. ``{"op": "rebase", ...}``) goes into the saved operation; ``prepare(ws, op)`` runs
    once the workspace is on the new branch, right before the first entry (both for operations built on
    this engine)."""
    base = base or series.base
    src = resolve_source(source or series.source, ctx.root)
    ws = Workspace(ctx.workspace)
    entries = series.upto(upto)
    with ws.lock():
        with output.progress(f"base {base} from {src.describe()}") as step:
            base_commit = src.ensure(base, progress=step.detail)
        if not ws.exists():
            _create(ws, src, base, base_commit)
        else:
            ws.require_no_operation()
            ws.info()  # a damaged record stops us here, before anything changes
            _finish_create(ws)
            ws.require_clean("apply")
            if ws.git.rev(base_commit) is None:
                ws.git.run("fetch", "-q", str(src.repo()), base_commit)
        g = ws.git
        branch = branch_for(base)
        branch_head = g.rev(f"refs/heads/{branch}")
        # what the branch holds now, relative to this base
        applied: list[AppliedCommit] = []
        if branch_head:
            g.set_ref(BASE_REF, base_commit)
            if g.run("merge-base", "--is-ancestor", base_commit, branch_head, check=False).ok:
                applied = ws.applied(branch_head)
            else:
                applied = [AppliedCommit(branch_head, None, None, "(branch not based on the base)", "")]
        skipped = ws.skipped(branch) if not reset else {}
        digests = _digests(series, entries)
        synced = _synced(ws, series, applied, digests)
        p = plan(entries, base, applied, skipped, digests, base_commit, synced)
        backup = None
        if p.diverged and not reset:
            raise WorkspaceError(
                f"the workspace branch {branch} does not match the series: {p.diverged}",
                "save edits made in the workspace with `vpatch refresh`, or start over from the base with "
                "`vpatch apply --reset` (the old branch is kept under refs/vpatch/backup/)")
        if p.diverged or (reset and branch_head):
            backup = f"refs/vpatch/backup/{branch}/{time.strftime('%Y%m%dT%H%M%S')}"
            if branch_head:
                g.set_ref(backup, branch_head, "vpatch apply --reset: backup")
            p = plan(entries, base, [], {}, digests, base_commit)
        op = {
            "op": "apply", "series": str(series.path.resolve()), "base": base, "base_commit": base_commit,
            "source": src.describe(), "branch": branch,
            "orig": {"branch": g.head_branch(), "head": g.head(), "branch_head": branch_head,
                     "base_ref": g.rev(BASE_REF), "skipped": ws.skipped(branch)},
            "todo": p.todo, "done": [{"id": i, "result": "kept"} for i in p.keep], "current": None,
            "merged": p.merged, "skipped": dict(p.skipped), "backup": backup, "started": time.time(),
        }
        op.update(op_extra or {})
        ws.save_operation(op)  # from here on, `vpatch abort` restores `orig`
        ws.record_branch(branch, base, base_commit, src.describe(), str(series.path.resolve()))
        g.run("checkout", "-q", "-f", "-B", branch, p.keep_head or base_commit)
        g.set_ref(BASE_REF, base_commit)
        if prepare is not None:
            prepare(ws, op)
            ws.save_operation(op)
        return run_operation(ws, series, op)


FRESH_MARK = "fresh"  # in .git/vpatch/: the workspace was cloned but its work tree not yet checked out


def _create(ws: Workspace, src, base: str, base_commit: str) -> None:
    """Clone the source into the (empty) workspace folder so that a kill at any point leaves either no
    ``.git`` (the next run starts over) or a whole one marked fresh (the next run finishes the checkout).

    The clone is made in ``.vpatch-new/`` inside the workspace, its HEAD set to the base and the fresh
    mark written, and only then is its ``.git`` renamed into place (one atomic rename)."""
    if any(p.name != NEW_DIR for p in ws.path.iterdir()):
        raise WorkspaceError(f"{ws.path} is neither a git checkout nor empty: vpatch makes a workspace only "
                             "in a new or empty folder", "pass --workspace a new folder (or the vpatch workspace)")
    tmp = ws.path / NEW_DIR
    if tmp.exists():
        shutil.rmtree(tmp)  # a creation killed before its rename: ours, start over
    output.say(f"creating workspace {ws.path}")
    r = run_git("clone", "-q", "--no-checkout", "--local", str(src.repo()), str(tmp), cwd=ws.path, check=False)
    if not r.ok:
        shutil.rmtree(tmp, ignore_errors=True)
        raise WorkspaceError(f"cannot create the workspace {ws.path}: {r.err}")
    g = Git(tmp)
    g.run("config", "gc.auto", "0")
    g.run("config", "core.autocrlf", "false")
    if g.rev(base_commit) is None:
        g.run("fetch", "-q", str(src.repo()), base_commit)
    g.run("update-ref", "--no-deref", "HEAD", base_commit)
    (tmp / ".git" / "vpatch").mkdir(exist_ok=True)
    (tmp / ".git" / "vpatch" / FRESH_MARK).write_text(base_commit + "\n")
    os.rename(tmp / ".git", ws.path / ".git")
    tmp.rmdir()
    with output.progress(f"checking out {base}"):
        _finish_create(ws)


def _finish_create(ws: Workspace) -> None:
    """Check out a workspace whose creation stopped after its ``.git`` was in place (nothing in its work
    tree can be the user's: it was an empty folder, and the checkout is vpatch's)."""
    if not ws.exists():
        return
    mark = ws.path / ".git" / "vpatch" / FRESH_MARK
    if mark.exists():
        ws.git.run("checkout", "-q", "-f", "--detach", "HEAD")
        mark.unlink()


def run_operation(ws: Workspace, series: Series, op: dict) -> dict:
    """Work through ``op['todo']``; stop with :class:`StoppedForConflict` at a conflict.

    Clean patches go the index-only way (:class:`~.entries.IndexOnly`: no work tree writes, one checkout
    at the end); an overlay, or a patch that does not apply cleanly, first brings the work tree to the tip
    and goes the exact way. The state is saved once per entry (with ``tip``, the last commit made)."""
    g = ws.git
    total = len(op["todo"])
    head = g.head() or op["base_commit"]
    tip = op.get("tip")
    # resuming after a kill in the index-only stretch: HEAD is behind the recorded tip; after `continue`
    # or `skip` committed on HEAD (or anything else), HEAD is where to go on from
    if not tip or tip == head or not g.run("merge-base", "--is-ancestor", head, tip, check=False).ok:
        tip = head
    asked: dict = {}
    reader = CatFile(g)  # one cat-file process for the run: the in-process apply's objects, pycheck's files
    fast = IndexOnly(ws, tip, op["branch"], reader)
    from .pycheck import Background

    checks = Background(g, reader)
    try:
        commits = {d["id"]: d.get("commit") for d in op["done"]}
        # committed by a run killed before their checks were recorded: check them again
        op["pycheck_pending"] = [e for e in op.get("pycheck_pending", []) if commits.get(e)]
        for eid in op["pycheck_pending"]:
            checks.submit(eid, commits[eid])
        digests = _digests(series, [series.get(i) for i in op["todo"]])  # read once: the prefetch and the loop
        asked = _prefetch_messages(ws, series, op["todo"], digests)
        with output.progress(f"applying onto {op['base']}", total=total) as step:
            while op["todo"]:
                eid = op["todo"][0]
                entry = series.get(eid)
                step.detail(eid)
                digest = digests[eid]
                if eid in asked:
                    asked.pop(eid).result()  # its message asked beside the run: kept, not asked again
                out = fast.try_patch(series, entry, digest) if entry.kind == "patch" else None
                if out is None:
                    fast.materialize()
                    if entry.kind == "patch":
                        out = apply_patch_entry(ws, series, entry, digest)
                    else:
                        out = apply_overlay_entry(ws, series, entry, digest, op["base_commit"])
                    if out.commit:
                        fast.tip = out.commit
                if out.result == "conflict":
                    op["current"] = {"id": eid, "title": entry.title, "message": out.message, "digest": digest,
                                     "conflicts": out.conflicts, "detail": out.detail}
                    op["tip"] = fast.tip
                    ws.save_operation(op)
                    step.log(f"[red]✗[/] {eid}: conflict")
                    _settle(ws, op, checks)
                    _stop(ws, op)
                op["tip"] = fast.tip
                _record(ws, op, eid, out, checks=checks)
                step.log(_line(eid, out))
                step.advance(1)
        fast.materialize()
        _settle(ws, op, checks)
    finally:
        for f in asked.values():
            f.cancel()
        checks.close()
        reader.close()
        fast.close()
    return _finish(ws, op)


def _prefetch_messages(ws: Workspace, series: Series, todo: list[str], digests: dict[str, str]) -> dict:
    """Ask git for every patch entry's message (``mailinfo``, ``interpret-trailers``: two processes an
    entry, kept by :func:`~.entries.patch_message` once asked) from four threads beside the run: on a first
    apply the processes overlap the entries before them instead of running one after the other. Returns
    entry id -> future; the run waits for an entry's future before applying it. A patch that cannot be
    read is left for its entry to report, in its turn."""
    patches = [e for e in (series.get(i) for i in todo) if e.kind == "patch"]
    if len(patches) < 4:
        return {}
    from concurrent.futures import ThreadPoolExecutor

    def ask(entry: Entry) -> None:
        try:
            patch_message(ws, series, entry, digests[entry.id])
        except Exception:  # noqa: BLE001 - reported when its entry is applied
            pass

    pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="vpatch-message")
    try:
        return {e.id: pool.submit(ask, e) for e in patches}
    finally:
        pool.shutdown(wait=False)  # the threads end once the futures are done (or cancelled)


def _line(eid: str, out: Outcome) -> str:
    mark = {"clean": "[green]✓[/]", "3-way": "[yellow]✓[/]", "resolved": "[yellow]✓[/]"}.get(out.result, "[cyan]–[/]")
    return f"{mark} {eid}: {out.result}" + (f" ({out.detail})" if out.detail and out.result != "clean" else "")


def _record(ws: Workspace, op: dict, eid: str, out: Outcome, checks=None) -> None:
    """The entry done, saved. Its commit's Python check (broken Python a merge left behind,
    manager/pycheck.py) is recorded at once, or, with ``checks`` (a :class:`~.pycheck.Background`), runs
    beside the next entries: the entry is listed in ``pycheck_pending`` until :func:`_settle` records it, so
    a run killed in between checks it again when it goes on."""
    op["todo"].pop(0)
    op["current"] = None
    rec: dict[str, Any] = {"id": eid, "result": out.result, "commit": out.commit, "detail": out.detail}
    op["done"].append(rec)
    if out.commit:
        if checks is not None:
            checks.submit(eid, out.commit, out.paths)
            op.setdefault("pycheck_pending", []).append(eid)
        else:
            from .pycheck import commit_findings
            _found(rec, commit_findings(ws.git, out.commit))
    if out.result in ("already-upstream", "empty", "skipped"):
        op["skipped"][eid] = f"{out.result}: {out.detail}".rstrip(": ")
    ws.save_operation(op)


def _found(rec: dict, found: list[dict]) -> None:
    if found:
        from .pycheck import describe
        rec["pycheck"] = found
        output.warn(f"[red]![/] {rec['id']}: {describe(found)}")


def _settle(ws: Workspace, op: dict, checks) -> None:
    """Record the Python checks still running (in entry order) and save."""
    pending = op.get("pycheck_pending") or []
    if not pending:
        return
    recs = {d["id"]: d for d in op["done"]}
    for eid in pending:
        _found(recs[eid], checks.result(eid))
    op["pycheck_pending"] = []
    ws.save_operation(op)


def _stop(ws: Workspace, op: dict) -> None:
    cur = op["current"]
    where = []
    for c in cur["conflicts"]:
        if c.get("lines"):
            where.append(f"{c['file']} (lines {', '.join(map(str, c['lines']))})")
        elif c.get("reject_file"):
            where.append(f"{c['file']} ({c['rejected_hunks']} hunks in {c['reject_file']})")
        else:
            where.append(c.get("file", "?"))
    raise StoppedForConflict(
        f"entry {cur['id']} ({cur['title']}) does not apply on {op['base']}: conflict in {'; '.join(where)}",
        f"resolve the conflicts in {ws.path}, `git add` the files, then `vpatch continue`; "
        "`vpatch skip` leaves this entry out; `vpatch abort` goes back to where you were",
        data={"stopped": True, "entry": cur["id"], "conflicts": cur["conflicts"], "workspace": str(ws.path),
              "done": op["done"], "todo": op["todo"]})


def _finish(ws: Workspace, op: dict) -> dict:
    branch = op["branch"]
    if op["op"] not in FINISHERS and op.get("finisher_module"):  # e.g. `vpatch continue` after a rebase stop
        import importlib
        importlib.import_module(op["finisher_module"])  # registers its finisher
    finisher = FINISHERS.get(op["op"])
    extra: dict = {}
    if finisher:
        # the finisher writes the series back (rebase: series.toml, patches, resolutions): keep a copy of
        # patches/ first and run it while the operation is still recorded, so a kill in the middle of it
        # is undone by `vpatch abort` like any other point of the operation
        _backup_series(ws, op)
        extra = finisher(ws, op) or {}
    ws.set_skipped(branch, op["skipped"])
    ws.clear_operation()
    shutil.rmtree(ws.vp_dir / SERIES_BACKUP, ignore_errors=True)
    g = ws.git
    resolved = [d["id"] for d in op["done"] if d["result"] == "resolved"]
    summary = {"op": op["op"], "base": op["base"], "base_commit": op["base_commit"], "branch": branch,
               "head": g.head(), "tree": g.tree_of("HEAD"), "done": op["done"], "merged": op["merged"],
               "skipped": op["skipped"], "backup": op.get("backup"), "workspace": str(ws.path)}
    if resolved:
        summary["hint"] = (f"entries resolved by hand: {', '.join(resolved)}; "
                           "`vpatch refresh` writes the resolutions back into patches/")
    summary.update(extra)
    return summary


SERIES_BACKUP = "series-backup"  # in .git/vpatch/: patches/ as it was before a finisher wrote to it


def _backup_series(ws: Workspace, op: dict) -> None:
    dest = ws.vp_dir / SERIES_BACKUP
    if op.get("finishing") and dest.is_dir():
        return  # a finish interrupted before: its copy is the one from before the first attempt
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(Path(op["series"]).parent, dest, symlinks=True)
    op["finishing"] = True
    ws.save_operation(op)


def _restore_series(ws: Workspace, op: dict) -> list[str]:
    """Put patches/ back as it was before the finisher started (files it wrote or added)."""
    src, dest = ws.vp_dir / SERIES_BACKUP, Path(op["series"]).parent
    if not src.is_dir():
        return []
    restored = []
    keep = set()
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src)
        keep.add(rel)
        if p.is_file() and not p.is_symlink():
            t = dest / rel
            if not t.is_file() or t.read_bytes() != p.read_bytes():
                atomic.write_bytes(t, p.read_bytes(), p.stat().st_mode & 0o7777)
                restored.append(str(t))
    for t in sorted(dest.rglob("*"), reverse=True):
        rel = t.relative_to(dest)
        if rel not in keep:
            if t.is_dir() and not t.is_symlink():
                if not any(t.iterdir()):
                    t.rmdir()
            else:
                t.unlink()
                restored.append(str(t))
    shutil.rmtree(src, ignore_errors=True)
    return restored


FINISHERS: dict = {}  # op name -> callable(ws, op) -> dict, for operations built on this engine (rebase)


def load_op(ws: Workspace) -> dict:
    op = ws.operation() if ws.exists() else None
    if not op:
        raise WorkspaceError("no vpatch operation is in progress", "`vpatch status` shows the workspace")
    return op


def continue_op(ws: Workspace, series_loader) -> dict:
    with ws.lock():
        op = load_op(ws)
        series = series_loader(op["series"])
        g = ws.git
        cur = op.get("current")
        if cur is None:
            if g.is_dirty():
                raise WorkspaceError(
                    "the last run was interrupted in the middle of an entry (the tree is half-changed)",
                    "`vpatch abort` goes back to where you were before it started")
            # interrupted between entries (or right after a commit): drop what is already committed
            applied = ws.applied()
            if op["todo"] and applied and applied[-1].entry_id == op["todo"][0]:
                _record(ws, op, op["todo"][0], Outcome("clean", commit=applied[-1].sha))
            return run_operation(ws, series, op)
        unmerged = g.unmerged_paths()
        if unmerged:
            raise WorkspaceError(f"still in conflict: {', '.join(unmerged)}",
                                 "edit them to resolve the conflicts, `git add` them, then `vpatch continue`")
        rej = [p for p in g.run("ls-files", "--others", "--exclude-standard").out.splitlines() if p.endswith(".rej")]
        if rej:
            raise WorkspaceError(f"rejected hunks are still lying in {', '.join(rej)}",
                                 "apply them by hand, delete the .rej files, `git add` your changes, then `vpatch continue`")
        markers = g.run("diff", "--cached", "--check", check=False).out
        if "conflict marker" in markers:
            raise WorkspaceError(f"staged files still hold conflict markers: {markers.splitlines()[0]}",
                                 "remove the <<<<<<< ======= >>>>>>> lines, `git add`, then `vpatch continue`")
        unstaged = [line for line in g.status_porcelain() if line[1] != " " or line.startswith("??")]
        if unstaged:
            raise WorkspaceError(f"unstaged changes in the workspace: {', '.join(x[3:] for x in unstaged[:5])}",
                                 "`git add` what belongs to the resolution, discard the rest, then `vpatch continue`")
        if g.run("diff", "--cached", "--quiet", check=False).ok:
            raise WorkspaceError(f"nothing is staged for entry {cur['id']}",
                                 "if the entry is no longer needed, `vpatch skip` leaves it out")
        sha = commit(ws, cur["message"])
        _record(ws, op, cur["id"], Outcome("resolved", commit=sha, detail="conflict resolved by hand"))
        output.say(f"[yellow]✓[/] {cur['id']}: resolved")
        return run_operation(ws, series, op)


def skip_op(ws: Workspace, series_loader) -> dict:
    with ws.lock():
        op = load_op(ws)
        series = series_loader(op["series"])
        g = ws.git
        cur = op.get("current")
        eid = cur["id"] if cur else (op["todo"][0] if op["todo"] else None)
        if eid is None:
            raise WorkspaceError("nothing to skip")
        g.run("reset", "-q", "--hard", "HEAD")
        for c in (cur or {}).get("conflicts", []):
            rf = c.get("reject_file")
            if rf and (ws.path / rf).exists():
                (ws.path / rf).unlink()
        _record(ws, op, eid, Outcome("skipped", detail="skipped by the user (`vpatch skip`)"))
        output.say(f"[cyan]–[/] {eid}: skipped")
        return run_operation(ws, series, op)


def abort_op(ws: Workspace, force: bool = False) -> dict:
    """Put back the branch, HEAD, index and work tree of before the operation.

    ``force``: when the operation's state file is damaged, forget it and put the index and tracked files
    back to HEAD (the branch and its commits stay; git's reflog shows where they were)."""
    with ws.lock():
        _finish_create(ws)
        try:
            op = load_op(ws)
        except StateError:
            if not force:
                raise
            return _forget_damaged(ws)
        g = ws.git
        orig = op["orig"]
        g.run("reset", "-q", "--hard")
        # files the operation created (the tree was clean when it started): remove them
        g.run("clean", "-q", "-fd")
        if orig["branch"]:
            if orig["branch"] != op["branch"]:
                g.run("checkout", "-q", "-f", orig["branch"])
                g.run("reset", "-q", "--hard", orig["head"])
            else:
                g.run("checkout", "-q", "-f", "--detach", orig["head"])
        else:
            g.run("checkout", "-q", "-f", "--detach", orig["head"])
        # the operation's branch: back to where it was, or gone if the operation made it
        if op["branch"] != orig["branch"] or orig["branch"] is None:
            if orig["branch_head"]:
                g.set_ref(f"refs/heads/{op['branch']}", orig["branch_head"], "vpatch abort")
            else:
                g.run("branch", "-q", "-D", op["branch"], check=False)
        else:
            g.set_ref(f"refs/heads/{op['branch']}", orig["head"], "vpatch abort")
            g.run("checkout", "-q", "-f", op["branch"])
        if orig.get("base_ref"):
            g.set_ref(BASE_REF, orig["base_ref"])
        else:
            g.delete_ref(BASE_REF)
        ws.set_skipped(op["branch"], orig.get("skipped") or {}, repair=True)
        restored = _restore_series(ws, op) if op.get("finishing") else []
        if restored:
            output.say(f"put back {len(restored)} file(s) of patches/ the interrupted finish had written")
        ws.clear_operation()
        return {"aborted": op["op"], "branch": g.head_branch(), "head": g.head(), "workspace": str(ws.path)}


def _forget_damaged(ws: Workspace) -> dict:
    g = ws.git
    g.run("reset", "-q", "--hard")
    ws.clear_operation()
    output.say(f"forgot the damaged operation state; the workspace is clean at HEAD "
               f"(`git -C {ws.path} reflog` shows where the branch was before the operation)")
    return {"aborted": "damaged operation", "branch": g.head_branch(), "head": g.head(), "workspace": str(ws.path),
            "forced": True}
