"""The bulk parsers under the plain-state_dict reader: zip directory, index ranges, record chains."""

import os
import zipfile

import numpy as np
import pytest

from morphscope.importers.torch_zip import ZipDirectory, _chains, index_ranges, read_zip_directory


def _numpy_directory(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        return read_zip_directory(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def _assert_same(ours, theirs):
    assert ours.names == theirs.names
    for field in ("header_offsets", "file_sizes", "compress_sizes", "name_bytes", "stored", "crcs"):
        np.testing.assert_array_equal(getattr(ours, field), getattr(theirs, field), err_msg=field)


def test_numpy_zip_directory_reads_what_zipfile_reads(tmp_path):
    import torch

    # torch.save's own layout (data descriptors, padded extra fields), 13 and 23 values, and
    # a stored archive written by zipfile with non-ASCII (utf-8 flagged) names and a comment.
    torch.save({"a.weight": torch.ones(13), "b.bias": torch.zeros(23)}, tmp_path / "t.pt")
    with zipfile.ZipFile(tmp_path / "z.zip", "w") as archive:
        archive.writestr("x/grün", b"\x80\x02}q\x00.")
        archive.writestr("x/schön", b"123")
        archive.comment = b"a comment"
    for name in ("t.pt", "z.zip"):
        ours = _numpy_directory(tmp_path / name)
        assert ours is not None, "the numpy reader takes it"
        with zipfile.ZipFile(tmp_path / name) as archive:
            _assert_same(ours, ZipDirectory.from_zipfile(archive))


@pytest.mark.parametrize("odd", ["deflated", "mixed name encodings", "prefixed", "signature in a name"])
def test_numpy_zip_directory_leaves_odd_archives_to_zipfile(tmp_path, odd):
    path = tmp_path / "odd.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if odd == "deflated" else zipfile.ZIP_STORED) as archive:
        archive.writestr("a", b"x" * 29)
        archive.writestr({"signature in a name": "bPK\x01\x02c", "mixed name encodings": "bé"}.get(odd, "b"),
                         b"y" * 17)
    if odd == "prefixed":  # a stub before the archive: zipfile corrects the offsets, numpy does not try
        path.write_bytes(b"#!stub\n" + path.read_bytes())
    assert _numpy_directory(path) is None
    with zipfile.ZipFile(path) as archive:  # ... and zipfile reads it
        assert [i.file_size for i in archive.infolist()] == [29, 17]


def test_find_gives_the_last_of_duplicate_names_and_minus_one_for_absent():
    size = np.zeros(3, np.int64)
    directory = ZipDirectory(["a", "b", "a"], size, size, size, size, np.ones(3, bool), size.astype(np.uint32))
    np.testing.assert_array_equal(directory.find(["a", "c", "b", "a"]), [2, -1, 1, 2])


def test_index_ranges_concatenate_the_ranges_and_skip_empty_ones():
    # 5..6, (none), 9..11, 2
    np.testing.assert_array_equal(index_ranges(np.array([5, 0, 9, 2]), np.array([2, 0, 3, 1])), [5, 6, 9, 10, 11, 2])
    assert index_ranges(np.array([3]), np.array([0])).size == 0


def test_chains_give_a_false_start_s_link_to_the_real_value():
    # Candidates 0 -> 2 -> 3 -> 5 and 4 -> 6; candidate 1, a false start just before 2,
    # links to 3 as well: 2, the later, keeps the link, and 1 heads nothing.
    linked = np.array([True, True, True, True, True, False, False])
    following = np.array([2, 3, 3, 5, 6, 0, 0])
    chains = [(head, chain.tolist()) for head, chain in _chains(linked, following)]
    assert chains == [(0, [0, 2, 3, 5]), (4, [4, 6])]
