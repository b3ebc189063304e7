"""Writing files so that a reader never sees half of one: a temporary file beside the target, then a rename.

A crash at any moment leaves either the previous file or the new one, never a truncated file. A write that finds
the disk full (ENOSPC, or a quota: EDQUOT) removes its temporary file and raises `DiskFullError`, which names the
file, the folder and the space: the previous file is untouched.

Every entry point (train.py, python -m src.merge, python -m src.eval.math) also checks its outputs against its
inputs before any work (`refuse_overwriting_inputs`, `check_output_file`), and train.py's resume identifies its
base and data files by content (`file_identity`).
"""
import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import torch

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# torch.save to a path writes through C++ (no errno reaches Python); these are its messages for a failed write.
TORCH_WRITE_FAILURES = ("unexpected pos", "file write failed", "PytorchStreamWriter failed")
NEARLY_FULL_BYTES = 64 << 20  # a failed torch write with less than this free is taken as a full disk


class DiskFullError(OSError):
    """A write ran out of space (errno ENOSPC); the message names the file or folder, the space and what to do."""

    def __str__(self):
        return self.strerror  # the message alone, without OSError's "[Errno 28] " prefix


def free_bytes(folder) -> Optional[int]:
    """Free space for this user on the filesystem of folder (None when it cannot be read)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def is_disk_full(error: BaseException, folder) -> bool:
    """Whether `error` (or an exception it was raised from or during) is a full disk: an OSError with errno ENOSPC
    or EDQUOT, or torch's C++ writer failing while folder's filesystem has almost no space left."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
            return True
        if isinstance(error, RuntimeError) and any(text in str(error) for text in TORCH_WRITE_FAILURES):
            free = free_bytes(folder)
            return free is not None and free < NEARLY_FULL_BYTES
        error = error.__cause__ or error.__context__
    return False


def disk_full_error(what: str, folder, needed: Optional[int] = None) -> DiskFullError:
    """The DiskFullError of writing `what` into folder (needed: bytes it had written when the space ran out)."""
    free = free_bytes(folder)
    space = ", ".join(part for part in (
        f"at least {megabytes(needed)} needed" if needed else "",
        f"{megabytes(free)} free now" if free is not None else "") if part)
    return DiskFullError(errno.ENOSPC, f"no space left on the disk of {folder} while writing {what}"
                                       f"{f' ({space})' if space else ''}; what was saved before is intact and the "
                                       f"partial write was removed. Free some space there (or choose a folder on "
                                       f"another disk) and run the same command again")


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
    except BaseException as error:
        full = isinstance(error, Exception) and not isinstance(error, DiskFullError) \
            and is_disk_full(error, path.parent)  # before the partial file frees its space
        written = os.path.getsize(tmp) if os.path.exists(tmp) else 0
        if os.path.exists(tmp):
            os.unlink(tmp)
        if full:
            what = f"{path.name} (the previous {path.name} is unchanged)" if path.exists() else path.name
            raise disk_full_error(what, path.parent, needed=written) from error
        raise


def save_atomic(obj, path) -> Path:
    """torch.save `obj` to `path` atomically: never a truncated checkpoint."""
    with atomic_binary_file(path) as handle:
        torch.save(obj, handle)
    return Path(path)


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


# ---- inputs and outputs of one command ----------------------------------------------------------------------------

class OverwriteRefused(ValueError):
    """An output of a command would write over (or move away) one of that command's own inputs."""


def _resolved(path) -> str:
    return os.path.realpath(os.path.abspath(os.fspath(path)))


def _file_key(path):
    """(st_dev, st_ino) of an existing file (hard links share it), else None."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def same_file(a, b) -> bool:
    """Whether two paths name one file: equal once resolved (symbolic links followed), or hard links to one
    inode (os.path.samefile: st_dev and st_ino)."""
    if a is None or b is None:
        return False
    if _resolved(a) == _resolved(b):
        return True
    key = _file_key(a)
    return key is not None and key == _file_key(b)


def _inside(path, folder) -> bool:
    return _resolved(path).startswith(_resolved(folder).rstrip(os.sep) + os.sep)


def _folder_file_keys(folder) -> dict:
    """{(st_dev, st_ino): path} of the files under an existing folder."""
    keys = {}
    if os.path.isdir(folder):
        for root, _, names in os.walk(folder):
            for name in names:
                key = _file_key(os.path.join(root, name))
                if key is not None:
                    keys.setdefault(key, os.path.join(root, name))
    return keys


def refuse_overwriting_inputs(outputs, inputs, folders=()) -> None:
    """Refuse (OverwriteRefused, a ValueError) a command whose outputs include one of its inputs.

    outputs, inputs: (label, path) pairs, e.g. ("--output", "merged.pth"), ("--base", "base.pth"); paths may be
    None (not given) and outputs need not exist yet. folders: (label, folder) pairs of folders the command writes
    into or replaces as a whole (an input inside one, or hard-linked to a file inside one, is refused too).
    Paths are compared resolved (symbolic links followed) and by inode, so a hard link is the same file. Call it
    before any work: the message names both flags and what to do.
    """
    inputs = [(label, path) for label, path in inputs if path is not None]
    for out_label, out_path in outputs:
        if out_path is None:
            continue
        for in_label, in_path in inputs:
            if same_file(out_path, in_path):
                how = ("is" if _resolved(out_path) == _resolved(in_path)
                       else "is a hard link to (or the same file as)")
                raise OverwriteRefused(
                    f"{out_label} {out_path} {how} {in_label} {in_path}: writing the output would destroy the "
                    f"input. Choose another {out_label}")
    for folder_label, folder in folders:
        if folder is None:
            continue
        keys = None
        for in_label, in_path in inputs:
            if _inside(in_path, folder):
                raise OverwriteRefused(
                    f"{in_label} {in_path} lies inside {folder}, which {folder_label} rewrites or moves: the input "
                    f"would be lost. Move the input elsewhere or choose another folder")
            keys = _folder_file_keys(folder) if keys is None else keys
            key = _file_key(in_path)
            if key is not None and key in keys:
                raise OverwriteRefused(
                    f"{in_label} {in_path} is a hard link to {keys[key]}, which {folder_label} rewrites or moves: "
                    f"the input would be lost. Copy the input elsewhere or choose another folder")


def check_output_file(label: str, path) -> None:
    """Refuse (ValueError) an output file path that cannot be written: an existing directory, a parent that is a
    file, or a folder this process may not write into. Nothing is created."""
    if path is None:
        return
    if os.path.isdir(path):
        raise ValueError(f"{label} {path} is an existing directory; give the name of a file to write (a new one, "
                         f"or one to replace), not a folder")
    check_writable_folder(f"the folder of {label} {path}", os.path.dirname(os.path.abspath(path)))


def check_writable_folder(label: str, folder) -> None:
    """Refuse (ValueError) a folder that is a file, lies under a file, or is not writable (the nearest existing
    ancestor when it does not exist yet). Nothing is created."""
    folder = os.path.abspath(os.fspath(folder))
    probe = folder
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        where = "is a file" if probe == folder else f"lies under {probe}, which is a file"
        raise ValueError(f"{label} {folder} {where}, not a folder; choose another path")
    if not os.access(probe, os.W_OK | os.X_OK):
        where = "" if probe == folder else f" (its nearest existing folder {probe} is not writable)"
        raise ValueError(f"{label} {folder} is not writable{where}; choose a folder you can write to")


IDENTITY_SAMPLES = 32  # chunks read by file_identity, spread evenly over the file
IDENTITY_CHUNK = 1 << 16


def file_identity(path) -> dict:
    """What a file is, by content, read cheaply: {"size": bytes, "sample_sha256": 16 hex digits of a SHA-256
    over IDENTITY_SAMPLES chunks of 64 KiB spread evenly from the first byte to the last (the whole file when it
    is smaller)}. A file replaced at the same path by another conversion or another model differs in its size or
    in the sampled bytes; reading ~2 MiB, it costs the same for a 15 GB base as for a small one."""
    size = os.path.getsize(path)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if size <= IDENTITY_SAMPLES * IDENTITY_CHUNK:
            digest.update(handle.read())
        else:
            span = size - IDENTITY_CHUNK
            for index in range(IDENTITY_SAMPLES):
                handle.seek(span * index // (IDENTITY_SAMPLES - 1))
                digest.update(handle.read(IDENTITY_CHUNK))
    return {"size": size, "sample_sha256": digest.hexdigest()[:16]}
