"""Files: atomic writes and safe reads, so that a crash or a bad file never costs the user work.

Every file fpnbook writes that matters (checkpoints, annotation JSON, results) goes
through :func:`atomic_save` or :func:`atomic_write_text`: the data goes to a hidden
temporary file beside the target, which then replaces the target in one ``os.replace``.
An interrupted write leaves the old file, never half of a new one.

Every ``.pt`` file it reads goes through :func:`load_torch_file`: ``weights_only=True``,
so that no code in a downloaded file runs, and one clear error for a missing, truncated
or foreign file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory; expected a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as f:
        tmp = Path(f.name)
    try:
        write(tmp)
        # NamedTemporaryFile makes 0600 files; give the result the permissions of a plain open().
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)``, atomically (creating the parent folder)."""
    return _atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` (UTF-8) to ``path``, atomically (creating the parent folder)."""
    return _atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def load_torch_file(path: str | os.PathLike, what: str = "file", map_location="cpu"):
    """``torch.load(path, weights_only=True)`` with one clear error per way it can fail.

    Raises FileNotFoundError for a missing file and ValueError, naming the file and
    ``what`` was expected, for one that is truncated, not a torch file, or a pickle
    that would need to run code (never loaded: only tensors and plain containers are).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # a truncated, foreign or code-carrying file fails in many ways
        # torch's own message for a pickle suggests weights_only=False, which would run its code: not repeated.
        reason = "it holds Python objects, not only tensors" if "Weights only load failed" in str(error) \
            else f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        raise ValueError(f"{path} is not a readable {what} ({reason})") from None
