"""One owner of where things live: the results tree, the default study storage, the shipped configs, safe names."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import sqlalchemy

# Everything lit_tuning writes lives under one root, relative to the working directory (the repo checkout) unless
# LIT_TUNING_RESULTS points elsewhere; each path below is derived from it, never spelled out again.
RESULTS_ROOT = Path(os.environ.get("LIT_TUNING_RESULTS", "results/tuning"))
RUNS_ROOT = RESULTS_ROOT / "runs"  # one run directory per fit (a study's trials under runs/<study>/tNNNN)
DATA_ROOT = RESULTS_ROOT / "data"  # a study's trials and curves tables
CONFIGS_ROOT = RESULTS_ROOT / "configs"  # a study's best.yaml and top-k configs
BENCH_ROOT = RESULTS_ROOT / "bench"  # `make bench*` figures and tables
DEFAULT_STORAGE = f"sqlite:///{RESULTS_ROOT.as_posix()}/optuna.db"

BASE_CONFIG = "configs/base.yaml"  # the untuned base experiment every search space starts from
SPACES_DIR = Path("configs/hyperparameters/search_spaces")
DEFAULT_SEARCH_SPACE = SPACES_DIR / "default.yaml"
SEED_GRID_SPACE = SPACES_DIR / "seed_grid.yaml"  # the original task's one-at-a-time design

SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")  # a run or experiment name usable as a folder name
UNSAFE_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]+")
MAX_NAME_LENGTH = 100


def sqlite_file(url: str) -> Path | None:
    """Return the database file of an sqlite:/// URL (Optuna or MLflow store), else None; raise ValueError if no URL."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError as error:
        raise ValueError(f"{url!r} is not a database URL") from error
    return Path(parsed.database) if parsed.get_backend_name() == "sqlite" and parsed.database else None


class UnsafeNameError(ValueError):
    """A name with no character usable in a file name."""


def safe_name(name: str) -> str:
    """Turn an experiment name into a file and run-directory name: no separators, spaces or leading dots."""
    cleaned = UNSAFE_CHARACTERS.sub("_", name).strip("._-")[:MAX_NAME_LENGTH]
    if not cleaned or not SAFE_NAME.fullmatch(cleaned):
        raise UnsafeNameError(f"name {name!r} has no usable characters; allowed: letters, digits, '.', '_', '-'")
    return cleaned


def study_slug(study_name: str) -> str:
    """Return a file-name-safe form of a study name (any other character -> '_', plus a hash when changed)."""
    slug = re.sub(r"[^A-Za-z0-9._-]", "_", study_name).lstrip(".") or "study"
    if slug == study_name:
        return slug
    return f"{slug}-{hashlib.sha1(study_name.encode()).hexdigest()[:8]}"  # distinct names stay distinct


def data_dir(study_name: str, root: Path = DATA_ROOT) -> Path:
    """Return results/tuning/data/<study slug>/, where a study's tables are written."""
    return root / study_slug(study_name)


def configs_dir(study_name: str, root: Path = CONFIGS_ROOT) -> Path:
    """Return results/tuning/configs/<study slug>/, where a study's best.yaml and top-k configs are written."""
    return root / study_slug(study_name)


def study_runs_dir(study_name: str, root: Path = RUNS_ROOT) -> Path:
    """Return results/tuning/runs/<study slug>/, the parent of a study's trial run directories."""
    return root / study_slug(study_name)
