"""The large-corpus builder on a tiny stand-in of the unpacked packages: every source read (the
kernel tarball as a stream), documents shuffled deterministically, a disjoint held-out split, the
manifest counting what went where."""

import io
import json
import tarfile

import pytest

from megatron_fp4.tools import debian_corpus


@pytest.fixture()
def root(tmp_path):
    base = tmp_path / "root"
    tarball = base / "usr/src/linux-source-6.1.tar.xz"
    tarball.parent.mkdir(parents=True)
    with tarfile.open(tarball, "w:xz") as archive:
        for name, data in {
            "linux/kernel/fork.c": b"int fork(void) { return 0; }\n",
            "linux/Documentation/process/howto.rst": b"How to do Linux kernel development\n",
            "linux/Kconfig": b"config FOO\n\tbool\n",
            "linux/firmware/blob.bin": b"\x00\x01\x02",
            "linux/drivers/huge_table.c": b"x" * (debian_corpus.MAX_DOCUMENT_BYTES + 1),
        }.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    files = {
        "usr/share/perl/5.36/pod/perlintro.pod": "=head1 NAME\n\nperlintro - a brief introduction\n",
        "usr/share/doc/postgresql-doc-15/html/tutorial.html": "<html><head><style>p {}</style></head><body><h1>Tutorial</h1><p>SELECT  1;</p></body></html>",
        "usr/share/doc/python3.11/html/_sources/tutorial/index.rst.txt": "The Python Tutorial\n===================\n",
        "usr/share/games/fortunes/wisdom": "Look before you leap.\n%\nHaste makes waste.\n%\n",
    }
    for relative, text in files.items():
        (base / relative).parent.mkdir(parents=True, exist_ok=True)
        (base / relative).write_text(text)
    fortunes = base / "usr/share/games/fortunes/wisdom"
    (fortunes.parent / "wisdom.dat").write_bytes(b"\x00index")
    return base


def test_every_source_is_read_and_filtered(root):
    documents = debian_corpus.collect_documents(str(root))
    by_source = {}
    for source, text in documents:
        by_source.setdefault(source, []).append(text)
    assert sorted(by_source["linux"]) == ["How to do Linux kernel development\n", "config FOO\n\tbool\n", "int fork(void) { return 0; }\n"]
    assert by_source["postgresql-doc"] == ["Tutorial\nSELECT 1;"]  # tags, styles and blank runs gone
    assert by_source["fortunes"] == ["Look before you leap.", "Haste makes waste."]
    assert len(by_source["perl-doc"]) == len(by_source["python-doc"]) == 1
    assert "kjv" not in by_source  # its package is not unpacked here: skipped, not an error


def test_shuffled_split_is_deterministic_disjoint_and_counted(root, tmp_path):
    manifest = debian_corpus.build_corpus(str(root), str(tmp_path / "a"), heldout_fraction=0.25, seed=7)
    again = debian_corpus.build_corpus(str(root), str(tmp_path / "b"), heldout_fraction=0.25, seed=7)
    read = lambda d, split: [json.loads(line) for line in (tmp_path / d / f"{split}.jsonl").read_text().splitlines()]  # noqa: E731
    assert read("a", "train") == read("b", "train") and manifest == again
    train, heldout = read("a", "train"), read("a", "heldout")
    assert len(heldout) == 2 and len(train) == 6
    assert not {r["text"] for r in heldout} & {r["text"] for r in train}
    counted = sum(c["documents"] for split in manifest["splits"].values() for c in split.values())
    assert counted == 8 and manifest["licences"]["linux"].startswith("GPL-2.0")


def test_nothing_unpacked_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match="none of the sources"):
        debian_corpus.build_corpus(str(tmp_path), str(tmp_path / "out"))


def test_manifest_records_the_package_files_and_pins_are_printable(root, tmp_path, capsys):
    debs = tmp_path / "debs"
    debs.mkdir()
    (debs / "fortunes_1.0_all.deb").write_bytes(b"abc")
    manifest = debian_corpus.build_corpus(str(root), str(tmp_path / "out"), debs_dir=str(debs))
    # sha256("abc")
    assert manifest["packages"] == {"fortunes_1.0_all.deb": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}
    with pytest.raises(SystemExit, match="no .deb files"):
        debian_corpus.build_corpus(str(root), str(tmp_path / "out2"), debs_dir=str(tmp_path))
    debian_corpus.main(["--pins"])
    pins = capsys.readouterr().out.split()
    assert "linux-source-6.1=6.1.176-1" in pins and len(pins) == len(debian_corpus.PINNED_PACKAGES)
