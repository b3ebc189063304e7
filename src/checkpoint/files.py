"""Writing files so that a reader never sees half of one: a temporary file beside the target, then a rename.

A crash at any moment leaves either the previous file or the new one, never a truncated file.
"""
import contextlib
import os
import shutil
import tempfile
from pathlib import Path


def readable_by_all(path) -> None:
    """Give a temporary file (mkstemp makes them 0600) the permissions a normal new file would get."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


@contextlib.contextmanager
def atomic_binary_file(path, suffix: str = ".tmp"):
    """Yield a binary file object opened on a temporary file beside `path`; on leaving the block without an
    error it is flushed to disk and renamed over `path`, otherwise removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        readable_by_all(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomic(text: str, path) -> Path:
    """Write UTF-8 text to `path` atomically."""
    with atomic_binary_file(path) as handle:
        handle.write(text.encode("utf-8"))
    return Path(path)


def copy_atomic(source, destination) -> Path:
    """Copy a file to `destination` atomically."""
    with atomic_binary_file(destination) as out, open(source, "rb") as src:
        shutil.copyfileobj(src, out, 1 << 24)
    return Path(destination)


def save_figure_atomic(figure, path) -> Path:
    """Save a matplotlib Figure as PNG to `path` atomically."""
    with atomic_binary_file(path, suffix=".png") as handle:
        figure.savefig(handle, format="png")
    return Path(path)
