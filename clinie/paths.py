"""Where things are: the repository, the cache, the training notes, the policy file.

The one place that reads the `CLINIE_*` path variables (each overrides a default):
- `$CLINIE_HOME`: the cache (default `~/.cache/clinie`); built models live under `models/`;
- `$CLINIE_TRAIN_DATA`: the annotated brat notes (default `../shared/data/kiwi-mtsamples/train`
  beside the repository);
- `$CLINIE_MODEL_DIR`: a trained fast-tier model to use instead of the embedded default;
- `$CLINIE_POLICIES`: the router's policy file (default the checked-in
  `serve_app/configs/policies.default.yaml`).
Relative paths in config files are relative to the repository root, because a Ray replica's
working directory is Ray's, not the caller's.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "serve_app" / "configs"
DEFAULT_POLICIES = CONFIG_DIR / "policies.default.yaml"


def clinie_home() -> Path:
    """The cache directory (`$CLINIE_HOME`, default `~/.cache/clinie`)."""
    return Path(os.environ.get("CLINIE_HOME") or Path.home() / ".cache" / "clinie")


def models_home() -> Path:
    """Where built models are cached."""
    return clinie_home() / "models"


def default_train_data() -> Path:
    """The annotated training notes (`$CLINIE_TRAIN_DATA`, default the shared brat folder)."""
    env = os.environ.get("CLINIE_TRAIN_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "kiwi-mtsamples" / "train"


def model_dir_override(explicit: str | Path | None = None) -> Path | None:
    """`explicit` (e.g. `--model`), else `$CLINIE_MODEL_DIR`, else None (the embedded default)."""
    chosen = explicit or os.environ.get("CLINIE_MODEL_DIR")
    return Path(chosen) if chosen else None


def policies_path(explicit: str | Path | None = None) -> Path:
    """`explicit` (`--policies`), else `$CLINIE_POLICIES`, else the checked-in default policy file."""
    return Path(explicit or os.environ.get("CLINIE_POLICIES") or DEFAULT_POLICIES)


def repo_path(path: str | Path, repo_root: Path = REPO_ROOT) -> Path:
    """A configured path: absolute as given, relative to the repository root otherwise."""
    p = Path(path)
    return p if p.is_absolute() else repo_root / p
