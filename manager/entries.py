"""Laying one entry onto the workspace (an effect at the edge): patch by ``git apply`` with a 3-way
fallback like ``git am -3``, overlay by writing whole files; then one commit with vpatch's trailers."""
from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .git import CatFile, Git, ObjectStore
from .series import Entry, Series
from .workspace import DIGEST_TRAILER, ENTRY_TRAILER, Workspace, inside, overlay_files

DEFAULT_AUTHOR = "vpatch <vpatch@vpatch.invalid>"


@dataclass
class Outcome:
    """What happened to one entry: ``clean`` | ``3-way`` | ``conflict`` | ``already-upstream`` | ``empty``."""

    result: str
    commit: str | None = None
    detail: str = ""
    conflicts: list[dict] = field(default_factory=list)  # {file, lines: [..]} or {file, rejected_hunks}
    paths: list[str] | None = None  # where the commit leaves files (from the patch), when known without git
    message: dict | None = None  # what the commit will carry (kept in the state while stopped)


@dataclass
class PatchInfo:
    author_name: str
    author_email: str
    date: str
    subject: str
    body: str
    diff: str

    @property
    def message(self) -> str:
        return self.subject + ("\n\n" + self.body.strip() if self.body.strip() else "") + "\n"


def parse_patch(path: Path, git: Git) -> PatchInfo:
    """Split a format-patch file into author, date, message and diff with ``git mailinfo`` (its answer for the
    same bytes is kept: :func:`_git_text_memo`)."""
    data = Path(path).read_bytes()

    def mailinfo() -> dict[str, str]:
        import tempfile  # lazily: `status` imports this module, and tempfile pulls in shutil and random

        with tempfile.TemporaryDirectory(prefix="vpatch-mailinfo-") as tmp:
            msg, patch = Path(tmp) / "msg", Path(tmp) / "patch"
            out = git.run("mailinfo", "--encoding=UTF-8", str(msg), str(patch), input=data).out
            fields = {}
            for line in out.splitlines():
                if ": " in line:
                    k, v = line.split(": ", 1)
                    fields[k] = v
            return {"author_name": fields.get("Author", ""), "author_email": fields.get("Email", ""),
                    "date": fields.get("Date", ""), "subject": fields.get("Subject", path.stem),
                    "body": msg.read_text(errors="surrogateescape"), "diff": patch.read_text(errors="surrogateescape")}

    f = _git_text_memo("mailinfo", path.stem.encode("utf-8", "surrogateescape") + b"\0" + data, mailinfo)
    return PatchInfo(f["author_name"], f["author_email"], f["date"], f["subject"], f["body"], f["diff"])


_TEXT_MEMO: dict[str, dict[str, str]] = {}


def _git_binary_tag() -> str:
    """Which git binary answered (size and mtime of the first ``git`` on PATH): a new git asks again."""
    for d in os.environ.get("PATH", "").split(os.pathsep):
        try:
            st = os.stat(os.path.join(d or ".", "git"))
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            return f"git-{st.st_size}-{st.st_mtime_ns}"
    return "git-unknown"


def _git_text_memo(kind: str, payload: bytes, compute) -> dict[str, str]:
    """``compute()``'s answer (a dict of strings) for a pure git text command (``mailinfo``,
    ``interpret-trailers``) on ``payload``, kept in memory and under ``$VPATCH_CACHE/git-text/``: re-applying,
    rebasing or checking the same entries then spawns no git for their messages (two processes an entry,
    ~a third of an index-only apply's time). A damaged entry is computed again."""
    import hashlib
    import json

    key = hashlib.sha256(kind.encode() + b"\0" + payload).hexdigest()
    if key in _TEXT_MEMO:
        return _TEXT_MEMO[key]
    from . import atomic
    from .context import cache_dir

    f = cache_dir() / "git-text" / _git_binary_tag() / key[:2] / f"{key}.json"
    try:
        got = json.loads(f.read_text(errors="surrogateescape"))
        if not isinstance(got, dict) or not all(isinstance(v, str) for v in got.values()):
            raise ValueError(f"damaged cache entry {f}")
    except (OSError, ValueError):
        got = compute()
        try:
            atomic.write_bytes(f, json.dumps(got).encode("utf-8", "surrogateescape"), fsync=False)
        except OSError:
            pass  # a read-only cache only costs time
    _TEXT_MEMO[key] = got
    return got


def new_paths(diff: str) -> list[str] | None:
    """The paths a git diff leaves a file at (added, modified, mode-changed, renamed or copied to; not
    deleted), sorted: what ``diff-tree --no-renames`` of the commit that applies it lists, less deletions.
    None where the text cannot say for sure (a quoted path, a binary patch): ask git then."""
    paths: set[str] = set()
    sections: list[dict] = []
    header = False  # in a file section's header lines (before its first hunk)
    for line in diff.split("\n"):
        if line.startswith("diff --git "):
            rest = line[len("diff --git "):]
            n = (len(rest) - 5) // 2  # "a/P b/P": the same path on both sides (a mode change, a new empty file)
            same = rest[2:2 + n] if n > 0 and rest == f"a/{rest[2:2 + n]} b/{rest[2:2 + n]}" else None
            sections.append({"header_path": same, "path": None, "deleted": False})
            header = True
            continue
        if not header:
            continue
        sec = sections[-1]
        if line.startswith("@@"):
            header = False
        elif line.startswith(("GIT binary patch", "Binary files ")):
            return None
        elif line.startswith("deleted file mode "):
            sec["deleted"] = True
        elif line.startswith(("+++ ", "rename to ", "copy to ")):
            path = line[4:] if line.startswith("+++ ") else line.split(" ", 2)[-1]
            if path.startswith('"'):
                return None
            if line.startswith("+++ "):
                if path == "/dev/null":
                    sec["deleted"] = True
                    continue
                if not path.startswith("b/"):
                    return None
                path = path[2:].removesuffix("\t")  # git ends a name that has a space with a tab here
            sec["path"] = path
    for sec in sections:
        if sec["deleted"]:
            continue
        path = sec["path"] or sec["header_path"]
        if path is None:
            return None
        paths.add(path)
    return sorted(paths)


def identity_env(name: str, email: str, date: str) -> dict[str, str]:
    """Commit identity: committer = author, committer date = author date, so re-applying the same
    entries on the same base gives the same commits."""
    return {"GIT_AUTHOR_NAME": name or "unknown", "GIT_AUTHOR_EMAIL": email or "unknown@invalid",
            "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_NAME": name or "unknown",
            "GIT_COMMITTER_EMAIL": email or "unknown@invalid", "GIT_COMMITTER_DATE": date}


def split_author(author: str) -> tuple[str, str]:
    m = re.match(r"^\s*(.*?)\s*<([^>]*)>\s*$", author)
    return (m.group(1), m.group(2)) if m else (author.strip(), "unknown@invalid")


def with_trailers(git: Git, message: str, entry_id: str, digest: str) -> str:
    def run() -> dict[str, str]:
        return {"text": git.run("interpret-trailers", "--if-exists", "replace",
                                "--trailer", f"{ENTRY_TRAILER}: {entry_id}", "--trailer", f"{DIGEST_TRAILER}: {digest}",
                                input=message, strip=False).out}

    payload = "\0".join((message, entry_id, digest)).encode("utf-8", "surrogateescape")
    return _git_text_memo("interpret-trailers", payload, run)["text"]


def commit(ws: Workspace, message: dict) -> str:
    g = ws.git
    env = identity_env(message["author_name"], message["author_email"], message["date"])
    g.run("commit", "--no-verify", "--allow-empty-message", "-q", "-F", "-", env=env, input=message["text"])
    return g.head() or ""


def conflict_report(ws: Workspace) -> list[dict]:
    """Files in conflict with the lines of their conflict markers, and rejected hunks."""
    report = []
    for f in ws.git.unmerged_paths():
        lines = []
        try:
            for i, line in enumerate((ws.path / f).read_text(errors="replace").splitlines(), 1):
                if line.startswith("<<<<<<<"):
                    lines.append(i)
        except FileNotFoundError:
            pass
        report.append({"file": f, "lines": lines, "hunks": len(lines)})
    return report


def cleanup_message(text: str) -> str:
    """What ``git commit -F -`` makes of a message (cleanup mode *whitespace*): trailing spaces and leading
    and trailing blank lines dropped, runs of blank lines made one."""
    out: list[str] = []
    blank = False
    for line in text.split("\n"):
        line = line.rstrip()
        if not line:
            blank = bool(out)
            continue
        if blank:
            out.append("")
            blank = False
        out.append(line)
    return "\n".join(out) + "\n" if out else ""


def patch_message(ws: Workspace, series: Series, entry: Entry, digest: str) -> tuple[PatchInfo, dict]:
    g = ws.git
    info = parse_patch(series.path.resolve().parent / entry.patch_file, g)
    return info, {"author_name": info.author_name, "author_email": info.author_email, "date": info.date,
                  "text": with_trailers(g, info.message, entry.id, digest)}


class IndexOnly:
    """The fast path of `apply`: patches that apply cleanly are laid onto a private index
    (``.git/vpatch/fast-index``) and committed with ``commit-tree`` on top of ``tip``, without touching the
    work tree, HEAD or the branch; :meth:`materialize` then moves the branch and the work tree to the tip
    in one checkout. A patch that does not apply cleanly returns None and goes the exact way (3-way,
    reverse-apply probe, conflict report) on a materialized work tree. Commits are the same as `git commit`
    would make (same tree, parent, identity, cleaned message)."""

    def __init__(self, ws: Workspace, tip: str, branch: str, reader: CatFile | None = None):
        self.ws, self.g, self.tip, self.branch = ws, ws.git, tip, branch
        # the plain patch (every hunk where it says, no mode change or rename) needs no git process at all
        # (manager/treepatch.py); VPATCH_GIT_APPLY=1 sends every patch through `git apply --cached` instead
        self.store = ObjectStore(self.g, reader) if reader is not None and not os.environ.get("VPATCH_GIT_APPLY") \
            else None
        self.index = ws.vp_dir / "fast-index"
        # index format 4 (path prefixes compressed): 30 % smaller for vLLM's 8.5k files (569 against 814 kB),
        # so each `apply --cached` and `write-tree` reads, hashes and writes less: 18.4 against 19.4 ms a pair
        # (medians of 40, interleaved, load 2.2)
        self.env = {"GIT_INDEX_FILE": str(self.index), "GIT_INDEX_VERSION": "4"}
        self.loaded: str | None = None
        self._known_trees: dict[str, str] = {}  # commit -> tree of the commits made here (no git process to ask)
        for p in (self.index, self.index.with_name("fast-index.lock")):
            p.unlink(missing_ok=True)  # ours alone; a killed run's leftovers (we hold the workspace lock)

    def _tip_tree(self) -> str:
        if self.tip not in self._known_trees:
            self._known_trees[self.tip] = self.g.tree_of(self.tip)
        return self._known_trees[self.tip]

    def try_patch(self, series: Series, entry: Entry, digest: str) -> Outcome | None:
        info, message = patch_message(self.ws, series, entry, digest)
        if not info.diff.strip():
            return None
        made = self._in_process(info.diff, message)
        if made is not None:
            self.tip, tree = made
            self._known_trees[self.tip] = tree
            return Outcome("clean", commit=self.tip, message=message, paths=new_paths(info.diff))
        if self.loaded != self.tip:
            self.g.run("read-tree", self.tip, env=self.env)
            self.loaded = self.tip
        if not self.g.run("apply", "--cached", "--whitespace=nowarn", "-", env=self.env, input=info.diff.encode(
                "utf-8", "surrogateescape"), check=False).ok:
            self.loaded = None  # atomic: nothing was written, but read it again to be sure
            return None
        tree = self.g.run("write-tree", env=self.env).out
        if tree == self._tip_tree():
            self.loaded = None
            return None  # changes nothing: the exact path says why (already upstream, empty)
        ident = identity_env(message["author_name"], message["author_email"], message["date"])
        sha = self.g.run("commit-tree", tree, "-p", self.tip, "-F", "-", env=ident,
                         input=cleanup_message(message["text"])).out
        self.tip = self.loaded = sha
        self._known_trees[sha] = tree
        return Outcome("clean", commit=sha, message=message, paths=new_paths(info.diff))

    def _in_process(self, diff: str, message: dict) -> tuple[str, str] | None:
        """(commit, tree) of the patch made in-process, the same objects `git apply --cached`, `write-tree` and
        `commit-tree` make; None where it is not the plain case (git does it then) or changes nothing."""
        if self.store is None:
            return None
        from . import treepatch as tp

        files = tp.parse(diff.encode("utf-8", "surrogateescape"))
        ident = identity_env(message["author_name"], message["author_email"], message["date"])
        name, email = ident["GIT_AUTHOR_NAME"], ident["GIT_AUTHOR_EMAIL"]
        date = tp.git_date(message["date"])
        if files is None or date is None or not tp.plain_ident(name) or not tp.plain_ident(email):
            return None
        root = self._tip_tree()
        tree = tp.apply_diff(self.store, root, files)
        if tree is None or tree == root:
            return None
        return self.store.write("commit", tp.commit_object(tree, self.tip, name, email, date,
                                                      cleanup_message(message["text"]))), tree

    def materialize(self) -> None:
        """Branch, HEAD, index and work tree to the tip (no -f: edits made meanwhile are never overwritten)."""
        if self.g.head() != self.tip:
            self.g.run("checkout", "-q", "-B", self.branch, self.tip)

    def close(self) -> None:
        for p in (self.index, self.index.with_name("fast-index.lock")):
            p.unlink(missing_ok=True)


def apply_patch_entry(ws: Workspace, series: Series, entry: Entry, digest: str) -> Outcome:
    g = ws.git
    info, message = patch_message(ws, series, entry, digest)
    if not info.diff.strip():
        return Outcome("empty", detail="the patch has no diff", message=message)
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".diff", delete=False) as tmp:
        tmp.write(info.diff)
        diff_path = tmp.name
    try:
        if g.run("apply", "--index", "--whitespace=nowarn", diff_path, check=False).ok:  # all or nothing
            return Outcome("clean", commit=commit(ws, message), message=message)
        if g.run("apply", "--check", "--reverse", "--index", diff_path, check=False).ok:
            return Outcome("already-upstream", detail="its change is already in the tree (the patch reverse-applies cleanly)",
                           message=message)
        three = g.run("apply", "--index", "--3way", "--whitespace=nowarn", diff_path, check=False)
        if three.ok and not g.unmerged_paths():
            if not g.run("diff", "--cached", "--quiet", check=False).ok:
                return Outcome("3-way", commit=commit(ws, message), message=message,
                               detail="applied by 3-way merge: the context had moved")
            return Outcome("already-upstream", detail="a 3-way merge of it changes nothing", message=message)
        conflicts = conflict_report(ws)
        if conflicts:
            return Outcome("conflict", conflicts=conflicts, message=message, detail=three.err)
        # no 3-way possible (base blobs unknown): apply what applies, leave .rej files for the rest
        rej = g.run("apply", "--index", "--reject", "--whitespace=nowarn", diff_path, check=False)
        rejected = []
        for line in (rej.err + "\n" + rej.out).splitlines():
            m = re.match(r"Rejected hunk #\d+\.|Applying patch (\S+) with (\d+) reject", line)
            if m and m.group(1):
                rejected.append({"file": m.group(1), "rejected_hunks": int(m.group(2)),
                                 "reject_file": m.group(1) + ".rej"})
        return Outcome("conflict", conflicts=rejected or [{"file": "?", "detail": three.err}], message=message,
                       detail="3-way merge impossible (the patch's base blobs are unknown here): "
                              "rejected hunks are in *.rej files")
    finally:
        os.unlink(diff_path)


def apply_overlay_entry(ws: Workspace, series: Series, entry: Entry, digest: str, base_commit: str) -> Outcome:
    g = ws.git
    overlay_root = series.path.resolve().parent.parent / "overlay"
    files = overlay_files(overlay_root, entry.id)
    author = entry.author or series.header.author or DEFAULT_AUTHOR
    name, email = split_author(author)
    date = g.run("show", "-s", "--format=%cI", base_commit).out
    text = entry.title + ("\n\n" + entry.message.strip() if entry.message else "") + "\n"
    message = {"author_name": name, "author_email": email, "date": date,
               "text": with_trailers(g, text, entry.id, digest)}
    if not files:
        return Outcome("empty", detail=f"overlay/{entry.id}/ holds no files", message=message)
    rels = []
    for rel, src in files:
        target = inside(ws.path, rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(src.read_bytes())
        mode = 0o755 if src.stat().st_mode & stat.S_IXUSR else 0o644
        os.chmod(target, mode)
        rels.append(rel)
    g.run("add", "--", *rels)
    if g.run("diff", "--cached", "--quiet", check=False).ok:
        return Outcome("already-upstream", detail="every overlay file is already in the tree as it is", message=message)
    return Outcome("clean", commit=commit(ws, message), message=message)
