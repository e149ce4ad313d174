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
    assert check_writable(location, overwrite=True) == ["centroid=0/"]  # an empty folder of ours


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


def test_overwrite_lists_exact_files_and_refuses_a_foreign_file_inside_a_centroid_folder(tmp_path):
    out = tmp_path / "out"
    (out / "centroid=1").mkdir(parents=True)
    (out / "centroid=1" / "part-00000.parquet").write_bytes(b"x")
    (out / "_manifest.json").write_text("{}")
    location = open_output(str(out), {})
    assert check_writable(location, overwrite=True) == ["_manifest.json", "centroid=1/part-00000.parquet"]
    (out / "centroid=1" / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match="did not write.*centroid=1/notes.txt"):
        check_writable(location, overwrite=True)
    assert (out / "centroid=1" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("name", ["centroid=1/part-1.parquet", "centroid=x/part-00000.parquet",
                                  "centroid=1/sub/part-00000.parquet", "kmeans_centroids.npy.bak",
                                  "_checkpoint/notes.txt", "_lease.json.bak", "_checkpoint/sub/state.json"])
def test_names_this_tool_does_not_write_are_foreign(tmp_path, name):
    out = tmp_path / "out"
    (out / name).parent.mkdir(parents=True, exist_ok=True)
    (out / name).write_bytes(b"x")
    with pytest.raises(OutputError, match="did not write"):
        check_writable(open_output(str(out), {}), overwrite=True)


def test_the_lease_and_checkpoint_are_names_this_tool_writes(tmp_path):
    out = tmp_path / "out"
    (out / "_checkpoint").mkdir(parents=True)
    for name in ("_lease.json", "_checkpoint/state.json", "_checkpoint/centroids-000012.npy", "_manifest.json"):
        (out / name).write_bytes(b"x")
    assert check_writable(open_output(str(out), {}), overwrite=True) == [
        "_checkpoint/centroids-000012.npy", "_checkpoint/state.json", "_lease.json", "_manifest.json"]


def test_a_file_written_after_the_listing_is_not_deleted(tmp_path):
    out = tmp_path / "out"
    (out / "centroid=2").mkdir(parents=True)
    (out / "centroid=2" / "part-00000.parquet").write_bytes(b"x")
    location = open_output(str(out), {})
    listed = check_writable(location, overwrite=True)
    (out / "centroid=2" / "part-00001.parquet").write_bytes(b"new")  # e.g. another writer
    clear_previous(location, listed)
    assert [p.name for p in (out / "centroid=2").iterdir()] == ["part-00001.parquet"]


@pytest.mark.parametrize("path", ["out*", "run[1]", "out?", "{a,b}"])
def test_runner_refuses_glob_characters_in_the_output(tmp_path, path):
    with pytest.raises(OutputError, match="glob characters"):
        open_output(str(tmp_path / path), {})
