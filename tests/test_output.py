"""Output location rules: overlap with inputs, non-empty outputs, what overwrite replaces."""

import pytest

from kmeans_partition.runner.output import (
    OutputError,
    check_not_inside_inputs,
    check_writable,
    clear_previous,
    open_output,
)


@pytest.mark.parametrize(
    "inp, out",
    [("data", "data"), ("data", "data/out"), ("data/*.parquet", "data/out"), ("data/in", "data")],
)
def test_output_overlapping_an_input_is_refused(tmp_path, inp, out):
    (tmp_path / "data" / "in").mkdir(parents=True)
    location = open_output(str(tmp_path / out), {})
    with pytest.raises(OutputError, match="output_path.*overlaps input path"):
        check_not_inside_inputs(location, [str(tmp_path / inp)], {})


def test_sibling_output_is_fine(tmp_path):
    location = open_output(str(tmp_path / "data-out"), {})
    check_not_inside_inputs(location, [str(tmp_path / "data"), "s3://bucket/data"], {})


def test_non_empty_output_needs_overwrite(tmp_path):
    (tmp_path / "out" / "centroid=0").mkdir(parents=True)
    location = open_output(str(tmp_path / "out"), {})
    with pytest.raises(OutputError, match="not empty.*overwrite"):
        check_writable(location, overwrite=False)
    assert check_writable(location, overwrite=True) == ["centroid=0"]


def test_overwrite_refuses_entries_it_did_not_write(tmp_path):
    out = tmp_path / "out"
    (out / "centroid=0").mkdir(parents=True)
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match="did not write.*notes.txt"):
        check_writable(open_output(str(out), {}), overwrite=True)
    assert (out / "notes.txt").read_text() == "keep me"


def test_clear_previous_removes_only_listed_entries(tmp_path):
    out = tmp_path / "out"
    (out / "centroid=3").mkdir(parents=True)
    (out / "centroid=3" / "part-00000.parquet").write_bytes(b"x")
    (out / "_manifest.json").write_text("{}")
    (out / "kmeans_centroids.npy").write_bytes(b"x")
    location = open_output(str(out), {})
    clear_previous(location, check_writable(location, overwrite=True))
    assert list(out.iterdir()) == []


def test_output_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        check_writable(open_output(str(tmp_path / "f"), {}), overwrite=True)
