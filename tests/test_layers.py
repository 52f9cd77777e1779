"""The package layers hold: cli on top; validation may use manager's model; manager never imports upward.

Read from the source with ``ast`` (imports inside functions count too), so a lazy import cannot hide a cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"manager": "vpatch.manager", "validation": "vpatch.validation", "ci": "vpatch.ci"}

# module prefix -> prefixes it must never import
FORBIDDEN = {
    "vpatch.manager": ("vpatch.manager.cli", "vpatch.validation", "vpatch.ci"),
    "vpatch.validation": ("vpatch.manager.cli", "vpatch.ci"),
}


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([PACKAGES[parts[0]], *parts[1:]])


def imports_of(path: Path) -> list[tuple[int, str]]:
    """Absolute names of everything ``path`` imports, relative imports resolved."""
    mod = module_name(path)
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            found += [(node.lineno, f"{name}.{a.name}") for a in node.names]
    return found


def sources() -> list[Path]:
    return sorted(p for d in PACKAGES for p in (REPO / d).rglob("*.py"))


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_imports_upward(path):
    mod = module_name(path)
    layer = next((k for k in FORBIDDEN if mod.startswith(k) and not mod.startswith("vpatch.manager.cli")), None)
    if layer is None:
        return
    bad = [f"{path.relative_to(REPO)}:{line} imports {name}" for line, name in imports_of(path)
           if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[layer])]
    assert not bad, "\n".join(bad)


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The checker itself can fail: a manager module importing validation is caught."""
    fake = REPO / "manager" / "_layer_probe_tmp.py"
    fake.write_text("def f():\n    from vpatch.validation import stats\n")
    try:
        with pytest.raises(AssertionError, match="imports vpatch.validation"):
            test_no_module_imports_upward(fake)
    finally:
        fake.unlink()


GIT_LAYER = REPO / "manager" / "git.py"


def git_spawns(path: Path) -> list[str]:
    """``subprocess.*(["git", ...])`` calls in ``path``: git is spawned by manager/git.py alone."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "subprocess"
                and node.args and isinstance(node.args[0], ast.List) and node.args[0].elts
                and isinstance(node.args[0].elts[0], ast.Constant) and node.args[0].elts[0].value == "git"):
            found.append(f"{path.relative_to(REPO)}:{node.lineno} spawns git itself (use manager/git.py)")
    return found


@pytest.mark.parametrize("path", [p for p in sources() if p != GIT_LAYER], ids=lambda p: str(p.relative_to(REPO)))
def test_only_the_git_layer_spawns_git(path):
    bad = git_spawns(path)
    assert not bad, "\n".join(bad)


def test_the_check_sees_a_raw_git_call():
    """The checker can fail: it sees the git layer's own spawns, and a raw call planted in manager/."""
    assert git_spawns(GIT_LAYER)
    fake = REPO / "manager" / "_git_probe_tmp.py"
    fake.write_text("import subprocess\nsubprocess.run(['git', 'status'], cwd='.')\n")
    try:
        assert git_spawns(fake) == ["manager/_git_probe_tmp.py:2 spawns git itself (use manager/git.py)"]
    finally:
        fake.unlink()
