"""Apply the series onto the base, one commit per entry, stopping resumably at the first conflict.

The planner (:func:`plan`) is pure: given the series, the base and what the workspace already
holds, it decides which commits to keep and which entries are still to do. The engine
(:func:`run_operation`) then works through the to-do list, saving the operation's state after every
entry, so ``continue``, ``skip`` and ``abort`` work after a conflict *and* after a crash or ``kill -9``.
"""
from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field

from . import output
from .entries import Outcome, apply_overlay_entry, apply_patch_entry, commit
from .errors import StoppedForConflict, WorkspaceError
from .series import Entry, Series, merged_at_or_before
from .sources import resolve_source
from .workspace import BASE_REF, AppliedCommit, Workspace, branch_for, entry_digest


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
        fresh = not ws.exists()
        if fresh:
            output.say(f"creating workspace {ws.path}")
            ws.path.parent.mkdir(parents=True, exist_ok=True)
            r = subprocess.run(["git", "clone", "-q", "--no-checkout", "--local", str(src.repo()), str(ws.path)],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise WorkspaceError(f"cannot create the workspace {ws.path}: {r.stderr.strip()}")
            ws.git.run("config", "gc.auto", "0")
            ws.git.run("config", "core.autocrlf", "false")
            ws.git.run("fetch", "-q", str(src.repo()), base_commit)
            with output.progress(f"checking out {base}") as step:
                ws.git.run("checkout", "-q", "--detach", base_commit)
        else:
            ws.require_no_operation()
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


def run_operation(ws: Workspace, series: Series, op: dict) -> dict:
    """Work through ``op['todo']``; stop with :class:`StoppedForConflict` at a conflict."""
    g = ws.git
    total = len(op["todo"])
    with output.progress(f"applying onto {op['base']}", total=total) as step:
        while op["todo"]:
            eid = op["todo"][0]
            entry = series.get(eid)
            step.detail(eid)
            digest = _digests(series, [entry])[eid]
            if entry.kind == "patch":
                out = apply_patch_entry(ws, series, entry, digest)
            else:
                out = apply_overlay_entry(ws, series, entry, digest, op["base_commit"])
            if out.result == "conflict":
                op["current"] = {"id": eid, "title": entry.title, "message": out.message, "digest": digest,
                                 "conflicts": out.conflicts, "detail": out.detail}
                ws.save_operation(op)
                step.log(f"[red]✗[/] {eid}: conflict")
                _stop(ws, op)
            _record(ws, op, eid, out)
            step.log(_line(eid, out))
            step.advance(1)
    return _finish(ws, op)


def _line(eid: str, out: Outcome) -> str:
    mark = {"clean": "[green]✓[/]", "3-way": "[yellow]✓[/]", "resolved": "[yellow]✓[/]"}.get(out.result, "[cyan]–[/]")
    return f"{mark} {eid}: {out.result}" + (f" ({out.detail})" if out.detail and out.result != "clean" else "")


def _record(ws: Workspace, op: dict, eid: str, out: Outcome) -> None:
    op["todo"].pop(0)
    op["current"] = None
    rec = {"id": eid, "result": out.result, "commit": out.commit, "detail": out.detail}
    op["done"].append(rec)
    if out.result in ("already-upstream", "empty", "skipped"):
        op["skipped"][eid] = f"{out.result}: {out.detail}".rstrip(": ")
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
    ws.set_skipped(branch, op["skipped"])
    ws.clear_operation()
    g = ws.git
    resolved = [d["id"] for d in op["done"] if d["result"] == "resolved"]
    summary = {"op": op["op"], "base": op["base"], "base_commit": op["base_commit"], "branch": branch,
               "head": g.head(), "tree": g.tree_of("HEAD"), "done": op["done"], "merged": op["merged"],
               "skipped": op["skipped"], "backup": op.get("backup"), "workspace": str(ws.path)}
    if resolved:
        summary["hint"] = (f"entries resolved by hand: {', '.join(resolved)}; "
                           "`vpatch refresh` writes the resolutions back into patches/")
    if op["op"] not in FINISHERS and op.get("finisher_module"):  # e.g. `vpatch continue` after a rebase stop
        import importlib
        importlib.import_module(op["finisher_module"])  # registers its finisher
    finisher = FINISHERS.get(op["op"])
    if finisher:
        summary.update(finisher(ws, op) or {})
    return summary


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


def abort_op(ws: Workspace) -> dict:
    """Put back the branch, HEAD, index and work tree of before the operation."""
    with ws.lock():
        op = load_op(ws)
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
        ws.set_skipped(op["branch"], orig.get("skipped") or {})
        ws.clear_operation()
        return {"aborted": op["op"], "branch": g.head_branch(), "head": g.head(), "workspace": str(ws.path)}
