"""Real English text that installs offline, as JSONL documents for tools/preprocess_data.py.

    python examples/reproduce/build_corpus.py ROOT OUT.jsonl

ROOT is a directory into which the Debian packages were unpacked (prepare_corpus.sh does it):
  - bible-kjv (+ bible-kjv-text): the King James Bible, public domain; one document per chapter,
    printed by the package's own `bible` program;
  - fortunes: the fortune-mod quotation files (BSD-style licence); one document per fortune;
  - python3.11-doc: the Python 3.11 documentation sources (reStructuredText, PSF licence): one
    document per page.
About 19 MB of text; roughly 5M tokens with an 8192-entry BPE.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys


def bible_chapters(root: str):
    text = subprocess.run(
        [os.path.join(root, "usr/bin/bible"), "-p", os.path.join(root, "usr/lib"), "gen1:1-rev22:21"],
        capture_output=True, text=True, check=True,
    ).stdout
    # chapters start with a heading line such as "Genesis 1" after a blank line
    for chapter in re.split(r"\n\n(?=\S[^\n]* \d+\n)", text):
        chapter = re.sub(r"\n(?!\s+\d+ )", " ", chapter.strip())  # join wrapped verse lines
        if chapter:
            yield chapter


def fortunes(root: str):
    folder = os.path.join(root, "usr/share/games/fortunes")
    for name in sorted(os.listdir(folder)):
        if "." in name:
            continue  # .dat indexes and .u8 links
        with open(os.path.join(folder, name), encoding="utf-8", errors="replace") as f:
            for fortune in f.read().split("\n%\n"):
                if fortune.strip():
                    yield fortune.strip()


def python_docs(root: str):
    folder = os.path.join(root, "usr/share/doc/python3.11/html/_sources")
    for directory, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            if name.endswith(".rst.txt"):
                with open(os.path.join(directory, name), encoding="utf-8") as f:
                    yield f.read()


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit("usage: build_corpus.py ROOT OUT.jsonl")
    root, out = sys.argv[1:]
    records = [
        {"text": document, "source": source}
        for source, documents in (("kjv", bible_chapters(root)), ("fortunes", fortunes(root)), ("python-docs", python_docs(root)))
        for document in documents
    ]
    # --split cuts train/validation by document position: shuffle so both see every source
    random.Random(1234).shuffle(records)
    counts = {}
    with open(out, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
            counts[record["source"]] = counts.get(record["source"], 0) + 1
    print(f"wrote {out}: " + ", ".join(f"{n} {source} documents" for source, n in counts.items()))


if __name__ == "__main__":
    main()
