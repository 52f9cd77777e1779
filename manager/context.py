"""Where things are: the series file, the repo root holding it, the workspace, the cache.

Every command receives a :class:`Context` built from the global options.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def cache_dir() -> Path:
    """``$VPATCH_CACHE`` or ``~/.cache/vpatch``: release repos, mirrors, logs shared across series."""
    env = os.environ.get("VPATCH_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vpatch"
    base.mkdir(parents=True, exist_ok=True)
    return base


@dataclass
class Context:
    series_path: Path
    workspace_path: Path | None = None
    json: bool = False

    @property
    def root(self) -> Path:
        """The directory that holds ``patches/`` (and ``overlay/``, ``vpatch.toml``)."""
        p = self.series_path.resolve().parent
        return p.parent if p.name == "patches" else p

    @property
    def patches_dir(self) -> Path:
        return self.series_path.resolve().parent

    @property
    def overlay_dir(self) -> Path:
        return self.root / "overlay"

    @property
    def config_path(self) -> Path:
        return self.root / "vpatch.toml"

    @property
    def state_dir(self) -> Path:
        """``.vpatch/`` beside the series: workspaces, venvs, results, logs (git-ignored)."""
        return self.root / ".vpatch"

    @property
    def workspace(self) -> Path:
        return (self.workspace_path or self.state_dir / "vllm").resolve()

    def log_dir(self) -> Path:
        d = self.state_dir / "logs" if self.state_dir.parent.exists() else cache_dir() / "logs"
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError:
            d = cache_dir() / "logs"
            d.mkdir(parents=True, exist_ok=True)
        return d
