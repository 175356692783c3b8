"""A large offline corpus of real text and source code from Debian packages, as shuffled JSONL.

    python -m megatron_fp4.tools.debian_corpus ROOT OUT_DIR [--heldout-fraction 0.005] [--seed 1234]

ROOT holds the unpacked packages (``examples/corpus/prepare_large_corpus.sh`` downloads and
unpacks them); every source below that is present is read, one document per unit:

| source | package | unit | licence |
| --- | --- | --- | --- |
| linux | linux-source-6.1 (the kernel tarball, read as a stream) | one file: C/assembly/scripts/Kconfig/Makefiles and Documentation/*.rst|txt | GPL-2.0 (docs: GPL-2.0 / CC-BY-4.0 per file) |
| perl-doc | perl-doc | one .pod page | Artistic-1.0 or GPL-1.0+ |
| postgresql-doc | postgresql-doc-15 | one HTML page, tags stripped | PostgreSQL Licence |
| python-doc | python3.11-doc | one .rst page | PSF-2.0 |
| go | golang-1.19-src | one .go file | BSD-3-Clause |
| rust | rust-src | one .rs file (the standard library and compiler sources) | MIT or Apache-2.0 |
| kjv | bible-kjv + bible-kjv-text | one chapter | public domain |
| fortunes | fortunes | one fortune | BSD-style (fortune-mod) |

Documents are shuffled with ``--seed`` across all sources, then the first ``--heldout-fraction``
go to ``heldout.jsonl`` (never for tuning or validation: the trainer's ``--split`` carves its
validation set out of ``train.jsonl``) and the rest to ``train.jsonl``. ``manifest.json`` records
documents, bytes and licence per source and split: the composition the docs cite, and with
``--debs DIR`` each package file's name and sha256.

The package versions are pinned (``PINNED_PACKAGES``, Debian 12 "bookworm" main): one changed
file in one package reshuffles every document, so a corpus built from the mirror's current
versions (e.g. a security update of linux-source) would silently differ from the one the results
were measured on. ``--pins`` prints the ``name=version`` list prepare_large_corpus.sh downloads.
"""

from __future__ import annotations

import argparse
import glob
import html.parser
import json
import os
import random
import re
import subprocess
import tarfile
from typing import Iterator

__all__ = ["SOURCES", "LICENCES", "PINNED_PACKAGES", "collect_documents", "build_corpus", "package_records", "main"]

LINUX_SUFFIXES = (".c", ".h", ".S", ".rst", ".txt", ".sh", ".py", ".pl", ".awk", ".lds", ".dts", ".dtsi")
LINUX_NAMES = ("Kconfig", "Makefile", "Kbuild")
MAX_DOCUMENT_BYTES = 256 * 1024  # generated tables and firmware blobs past this are skipped
LICENCES = {
    "linux": "GPL-2.0 (Documentation: GPL-2.0 or CC-BY-4.0 per file)",
    "perl-doc": "Artistic-1.0 or GPL-1.0-or-later",
    "postgresql-doc": "PostgreSQL Licence",
    "python-doc": "PSF-2.0",
    "go": "BSD-3-Clause",
    "rust": "MIT or Apache-2.0",
    "kjv": "public domain",
    "fortunes": "BSD-style (fortune-mod)",
}


# the versions of the corpus docs/runs/corpus and docs/runs/norepeat were built from (2026-11-25)
PINNED_PACKAGES = {
    "linux-source-6.1": "6.1.176-1",
    "perl-doc": "5.36.0-7+deb12u3",
    "postgresql-doc-15": "15.18-0+deb12u1",
    "python3.11-doc": "3.11.2-6+deb12u8",
    "golang-1.19-src": "1.19.8-2",
    "rust-src": "1.63.0+dfsg1-2",
    "bible-kjv": "4.38",
    "bible-kjv-text": "4.38",
    "fortunes": "1:1.99.1-7.3",
}


def package_records(debs_dir: str) -> dict[str, str]:
    """{.deb file name: sha256} for the package files in ``debs_dir`` (recorded in the manifest)."""
    import hashlib

    records = {}
    for path in sorted(glob.glob(os.path.join(debs_dir, "*.deb"))):
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        records[os.path.basename(path)] = digest.hexdigest()
    if not records:
        raise SystemExit(f"error: --debs {debs_dir}: no .deb files there")
    return records


def _decode(raw: bytes) -> str | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if text.strip() and "\x00" not in text else None


def linux_documents(root: str) -> Iterator[str]:
    """Files of the kernel source tarball, streamed (never unpacked to disk)."""
    for tarball in sorted(glob.glob(os.path.join(root, "usr/src/linux-source-*.tar.*"))):
        with tarfile.open(tarball, mode="r|*") as archive:
            for member in archive:
                name = os.path.basename(member.name)
                if not member.isfile() or member.size > MAX_DOCUMENT_BYTES:
                    continue
                if not (name.endswith(LINUX_SUFFIXES) or name in LINUX_NAMES):
                    continue
                text = _decode(archive.extractfile(member).read())
                if text:
                    yield text


def _files(root: str, pattern: str) -> list[str]:
    return sorted(glob.glob(os.path.join(root, pattern), recursive=True))


def perl_documents(root: str) -> Iterator[str]:
    for path in _files(root, "usr/share/perl/*/pod/**/*.pod"):  # ** matches no directory too
        with open(path, "rb") as f:
            text = _decode(f.read())
        if text:
            yield text


BLOCK_TAGS = {"p", "div", "br", "li", "dt", "dd", "tr", "pre", "table", "section", "h1", "h2", "h3", "h4", "h5", "h6", "title"}


class _TextOnly(html.parser.HTMLParser):
    """Visible text; block-level tags end lines, script/style contents are dropped."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        self._skip += tag in ("script", "style")
        if tag in BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        self._skip -= tag in ("script", "style") and self._skip > 0
        if tag in BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def html_text(page: str) -> str:
    """The visible text of an HTML page, blank runs collapsed."""
    parser = _TextOnly()
    parser.feed(page)
    lines = [" ".join(line.split()) for line in "".join(parser.parts).splitlines()]
    return "\n".join(line for line in lines if line)


def postgresql_documents(root: str) -> Iterator[str]:
    for path in _files(root, "usr/share/doc/postgresql-doc-*/html/*.html"):
        with open(path, "rb") as f:
            page = _decode(f.read())
        if page:
            text = html_text(page)
            if text:
                yield text


def python_documents(root: str) -> Iterator[str]:
    for path in _files(root, "usr/share/doc/python3*/html/_sources/**/*.rst.txt"):
        with open(path, "rb") as f:
            text = _decode(f.read())
        if text:
            yield text


def _source_files(root: str, pattern: str) -> Iterator[str]:
    for path in _files(root, pattern):
        if os.path.isfile(path) and os.path.getsize(path) <= MAX_DOCUMENT_BYTES:
            with open(path, "rb") as f:
                text = _decode(f.read())
            if text:
                yield text


def go_documents(root: str) -> Iterator[str]:
    return _source_files(root, "usr/share/go-*/src/**/*.go")


def rust_documents(root: str) -> Iterator[str]:
    return _source_files(root, "usr/src/rustc-*/**/*.rs")


def kjv_documents(root: str) -> Iterator[str]:
    """One document per chapter of the KJV, printed by the package's own ``bible`` program (the
    text package stores it compressed in its own format)."""
    program = os.path.join(root, "usr/bin/bible")
    if not os.path.isfile(program):
        return
    text = subprocess.run([program, "-p", os.path.join(root, "usr/lib"), "gen1:1-rev22:21"], capture_output=True, text=True, check=True).stdout
    # chapters start with a heading line such as "Genesis 1" after a blank line
    for chapter in re.split(r"\n\n(?=\S[^\n]* \d+\n)", text):
        chapter = re.sub(r"\n(?!\s+\d+ )", " ", chapter.strip())  # join wrapped verse lines
        if chapter:
            yield chapter


def fortune_documents(root: str) -> Iterator[str]:
    for path in _files(root, "usr/share/games/fortunes/*"):
        if "." not in os.path.basename(path) and os.path.isfile(path):  # not the .dat indexes and .u8 links
            with open(path, encoding="utf-8", errors="replace") as f:
                for fortune in f.read().split("\n%\n"):
                    if fortune.strip():
                        yield fortune.strip()


SOURCES = {
    "linux": linux_documents,
    "perl-doc": perl_documents,
    "postgresql-doc": postgresql_documents,
    "python-doc": python_documents,
    "go": go_documents,
    "rust": rust_documents,
    "kjv": kjv_documents,
    "fortunes": fortune_documents,
}


def collect_documents(root: str) -> list[tuple[str, str]]:
    """(source, text) for every document of every source present under ``root``."""
    return [(source, text) for source, reader in SOURCES.items() for text in reader(root)]


def build_corpus(root: str, out_dir: str, heldout_fraction: float = 0.005, seed: int = 1234, debs_dir: str | None = None) -> dict:
    """Shuffle at document level, split off the held-out part, write JSONL and the manifest
    (with the package files' hashes when ``debs_dir`` is given)."""
    if not 0 <= heldout_fraction < 1:
        raise SystemExit(f"error: --heldout-fraction {heldout_fraction}: must be in [0, 1)")
    documents = collect_documents(root)
    if not documents:
        raise SystemExit(f"error: {root}: none of the sources {list(SOURCES)} is unpacked there (prepare_large_corpus.sh)")
    random.Random(seed).shuffle(documents)
    heldout_count = int(round(heldout_fraction * len(documents)))
    splits = {"heldout": documents[:heldout_count], "train": documents[heldout_count:]}
    os.makedirs(out_dir, exist_ok=True)
    manifest = {"seed": seed, "heldout_fraction": heldout_fraction, "licences": {s: LICENCES[s] for s in SOURCES}, "splits": {}}
    if debs_dir is not None:
        manifest["packages"] = package_records(debs_dir)
    for split, items in splits.items():
        path = os.path.join(out_dir, f"{split}.jsonl")
        with open(path + ".partial", "w", encoding="utf-8") as f:
            for source, text in items:
                f.write(json.dumps({"text": text, "source": source}, ensure_ascii=False) + "\n")
        os.replace(path + ".partial", path)
        counts: dict[str, dict[str, int]] = {}
        for source, text in items:
            entry = counts.setdefault(source, {"documents": 0, "bytes": 0})
            entry["documents"] += 1
            entry["bytes"] += len(text.encode("utf-8"))
        manifest["splits"][split] = counts
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m megatron_fp4.tools.debian_corpus", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", nargs="?", help="directory the Debian packages are unpacked into")
    parser.add_argument("out_dir", nargs="?", help="where train.jsonl, heldout.jsonl and manifest.json go")
    parser.add_argument("--heldout-fraction", type=float, default=0.005)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--debs", metavar="DIR", help="the downloaded .deb files: their names and sha256 go into manifest.json")
    parser.add_argument("--pins", action="store_true", help="print the pinned package=version list and exit")
    options = parser.parse_args(argv)
    if options.pins:
        print(" ".join(f"{name}={version}" for name, version in PINNED_PACKAGES.items()))
        return {}
    if options.root is None or options.out_dir is None:
        parser.error("ROOT and OUT_DIR are required (or --pins)")
    manifest = build_corpus(options.root, options.out_dir, options.heldout_fraction, options.seed, options.debs)
    for split, counts in manifest["splits"].items():
        total = sum(c["bytes"] for c in counts.values())
        print(f"{split}: {sum(c['documents'] for c in counts.values())} documents, {total / 2**20:.1f} MiB: "
              + ", ".join(f"{s} {c['bytes'] / 2**20:.1f} MiB" for s, c in sorted(counts.items())))
    return manifest


if __name__ == "__main__":
    main()
