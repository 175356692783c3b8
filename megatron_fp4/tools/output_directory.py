"""A tool's output directory, written without risking what is already there.

Rules: the output may be neither an input nor inside one nor around one (``--output`` equal to
``--load`` once deleted the checkpoint being exported); an existing non-empty output is replaced
only with ``--force``; and nothing existing is touched until the new content is complete: it is
written into a temporary sibling, then swapped in (the old directory is renamed aside first and
deleted last, so a crash at any point leaves either the old or the new directory whole).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

__all__ = ["check_output_directory", "written_atomically"]


def _inside(path: str, directory: str) -> bool:
    path, directory = os.path.realpath(path), os.path.realpath(directory)
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def check_output_directory(output: str, output_flag: str, force: bool, inputs: dict[str, str]) -> None:
    """Refuse an output that overlaps an input (``inputs``: flag -> path) or that is a non-empty
    directory without ``force``; raises SystemExit naming the flags."""
    for flag, path in inputs.items():
        if path and (_inside(output, path) or _inside(path, output)):
            raise SystemExit(f"error: {output_flag} {output} and {flag} {path} overlap (the same directory or one inside the other); choose another {output_flag}")
    if os.path.exists(output) and not os.path.isdir(output):
        raise SystemExit(f"error: {output_flag} {output} exists and is not a directory")
    if os.path.isdir(output) and os.listdir(output) and not force:
        raise SystemExit(f"error: {output_flag} {output} exists and is not empty; pass --force to replace it")


@contextlib.contextmanager
def written_atomically(output: str):
    """Yield a temporary sibling directory to write into; on success it becomes ``output`` (the
    previous ``output``, if any, is removed only after the swap); on failure it is deleted and
    ``output`` is untouched."""
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(output))}.partial-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 would otherwise become the output's mode
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    previous = None
    if os.path.exists(output):
        previous = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(output))}.old-", dir=parent)
        os.rmdir(previous)
        os.replace(output, previous)
    os.replace(staging, output)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
