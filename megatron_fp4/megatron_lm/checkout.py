"""Make a patched Megatron-LM: the pinned upstream tag with megatron-fp4's patch series applied.

    python -m megatron_fp4.megatron_lm.checkout [--dir DIR] [--source PATH | --clone]

DIR (default ``$MEGATRON_LM_DIR``, else ``./megatron-lm``): an existing Megatron-LM checkout is
patched in place; otherwise one is made there, by copying ``--source`` (a Megatron-LM tree of the
pinned tag: default ``../shared/megatron-lm`` beside this repository when it exists, for offline
machines) or, with ``--clone`` (or when no source exists), ``git clone --branch <tag>`` from
GitHub. The series is applied idempotently: a patch already in the tree is skipped, one that
neither applies nor is already there stops everything with the patch named (nothing after it is
applied). The tree's tag is checked first (its ``UPSTREAM`` file or ``git describe``): a tag the
series was not made for is refused, naming the tags there are series for.

Then run ``examples/pretrain_gpt.sh`` with ``MEGATRON_LM_DIR=DIR`` (it starts upstream's
``pretrain_gpt.py``), or ``torchrun DIR/pretrain_gpt.py ...`` with this package importable.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["PINNED_TAG", "patch_directory", "available_tags", "upstream_tag", "apply_series", "main"]

PINNED_TAG = "core_v0.16.1"
REPOSITORY = "https://github.com/NVIDIA/Megatron-LM.git"
ROOT = Path(__file__).resolve().parents[2]
MARKER = ".megatron_fp4_patched"


class CheckoutError(RuntimeError):
    """A Megatron-LM tree that cannot be patched; the message names the tag, patch or path."""


def patch_directory(tag: str = PINNED_TAG) -> Path:
    return ROOT / "patches" / "megatron-lm" / tag


def available_tags() -> list[str]:
    base = ROOT / "patches" / "megatron-lm"
    return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


def upstream_tag(tree: Path) -> str | None:
    """The Megatron-LM tag of ``tree``: its UPSTREAM file's first word, else ``git describe``."""
    upstream = tree / "UPSTREAM"
    if upstream.is_file():
        words = upstream.read_text().split()
        return words[0] if words else None
    if (tree / ".git").exists():
        result = subprocess.run(["git", "-C", str(tree), "describe", "--tags", "--exact-match"], capture_output=True, text=True)
        if result.returncode == 0:
            return result.stdout.strip()
    return None


def _git_apply(tree: Path, patch: Path, *flags: str) -> subprocess.CompletedProcess:
    # --directory-less apply inside the tree; works whether or not the tree is a git checkout
    return subprocess.run(["git", "apply", *flags, str(patch)], cwd=tree, capture_output=True, text=True)


def apply_series(tree: Path, tag: str = PINNED_TAG, log=print) -> list[str]:
    """Apply the series for ``tag`` to ``tree`` idempotently; returns what happened per patch."""
    found = upstream_tag(tree)
    if found is None:
        raise CheckoutError(f"{tree}: cannot tell its Megatron-LM tag (no UPSTREAM file, not a tagged git checkout); the series is for {tag}")
    if found != tag:
        raise CheckoutError(f"{tree} is Megatron-LM {found}; megatron-fp4 has patch series for {available_tags()} (use a {tag} checkout)")
    patches = sorted(patch_directory(tag).glob("*.patch"))
    if not patches:
        raise CheckoutError(f"no patches in {patch_directory(tag)} (is this a megatron-fp4 source checkout?)")
    outcome = []
    for patch in patches:
        if _git_apply(tree, patch, "--check").returncode == 0:
            result = _git_apply(tree, patch)
            if result.returncode != 0:
                raise CheckoutError(f"{patch.name} failed to apply to {tree}: {result.stderr.strip()}")
            outcome.append(f"applied {patch.name}")
        elif _git_apply(tree, patch, "--reverse", "--check").returncode == 0:
            outcome.append(f"already applied {patch.name}")
        else:
            detail = _git_apply(tree, patch, "--check").stderr.strip()
            raise CheckoutError(f"{patch.name} does not apply to {tree} and is not already applied (a modified tree?): {detail}")
        log(f"  {outcome[-1]}")
    (tree / MARKER).write_text(f"{tag}\n" + "".join(f"{p.name}\n" for p in patches))
    return outcome


def _default_source() -> Path | None:
    shared = ROOT.parent / "shared" / "megatron-lm"
    return shared if (shared / "pretrain_gpt.py").is_file() else None


def make_tree(target: Path, source: Path | None, clone: bool, tag: str, log=print) -> None:
    """Fill ``target`` (absent or empty) from ``source`` or a clone of ``tag``."""
    if target.exists() and any(target.iterdir()):
        raise CheckoutError(f"--dir {target} exists, is not empty and holds no Megatron-LM (no pretrain_gpt.py)")
    if source is not None and not clone:
        if not (source / "pretrain_gpt.py").is_file():
            raise CheckoutError(f"--source {source}: not a Megatron-LM tree (no pretrain_gpt.py)")
        log(f"copying {source} -> {target}")
        shutil.copytree(source, target, dirs_exist_ok=True)
        return
    log(f"cloning {REPOSITORY} at {tag} -> {target}")
    result = subprocess.run(["git", "clone", "--depth", "1", "--branch", tag, REPOSITORY, str(target)], capture_output=True, text=True)
    if result.returncode != 0:
        raise CheckoutError(f"git clone of {tag} failed: {result.stderr.strip()} (offline? give --source with a {tag} tree)")


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m megatron_fp4.megatron_lm.checkout", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default=os.environ.get("MEGATRON_LM_DIR", "megatron-lm"), help="the Megatron-LM tree to patch or make")
    parser.add_argument("--source", default=None, help="a Megatron-LM tree of the pinned tag to copy (default: ../shared/megatron-lm when present)")
    parser.add_argument("--clone", action="store_true", help="clone the pinned tag from GitHub instead of copying")
    parser.add_argument("--tag", default=PINNED_TAG, help=f"the upstream tag (series exist for: {', '.join(available_tags()) or 'none'})")
    options = parser.parse_args(argv)
    target = Path(options.dir).resolve()
    try:
        if options.tag not in available_tags():
            raise CheckoutError(f"--tag {options.tag}: megatron-fp4 has patch series for {available_tags()}")
        if not (target / "pretrain_gpt.py").is_file():
            source = Path(options.source).resolve() if options.source else _default_source()
            make_tree(target, source, options.clone or source is None, options.tag)
        print(f"patching {target} (Megatron-LM {upstream_tag(target)}) with {patch_directory(options.tag)}:")
        apply_series(target, options.tag)
    except CheckoutError as error:
        raise SystemExit(f"error: {error}") from None
    print(f"done: export MEGATRON_LM_DIR={target} and run examples/pretrain_gpt.sh (it then starts upstream's pretrain_gpt.py)")
    return target


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
