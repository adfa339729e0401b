"""Dataset layouts: the folder written by the miner, the Hugging Face parquet/arrow files."""

from __future__ import annotations

import io
import re
import json

import pytest
import torch
from PIL import Image

from motionnft.data import METADATA_FILE, DatasetWriter, open_dataset, write_metadata
from motionnft.image import to_uint8


def solid(value: float, size=(8, 10)) -> torch.Tensor:
    return torch.full((1, 3, *size), value)


def png_bytes(value: float) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(solid(value)[0]).permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


def test_written_samples_read_back_with_their_fields(tmp_path):
    with DatasetWriter(tmp_path / "ds") as writer:
        writer.add("a", "raise the arm", solid(0.2), solid(0.8), category="pose", metrics={"motion": 0.19})
        writer.add("b", "", solid(0.4), solid(0.6))
    dataset = open_dataset(tmp_path / "ds")
    assert dataset.layout == "folder" and len(dataset) == 2
    first = dataset[0]
    assert (first.id, first.prompt, first.category) == ("a", "raise the arm", "pose")
    assert first.extra == {"metrics": {"motion": 0.19}}
    assert torch.allclose(first.input_image(), solid(0.2), atol=1 / 255)
    assert torch.allclose(first.target_image(), solid(0.8), atol=1 / 255)
    assert dataset[1].prompt == ""


def test_a_rerun_resumes_without_duplicates(tmp_path):
    with DatasetWriter(tmp_path) as writer:
        writer.add("a", "p", solid(0.1), solid(0.2))
    with DatasetWriter(tmp_path) as writer:
        assert "a" in writer and len(writer) == 1
        with pytest.raises(ValueError, match="already"):
            writer.add("a", "p", solid(0.1), solid(0.2))
        writer.add("b", "p", solid(0.1), solid(0.2))
    assert [s.id for s in open_dataset(tmp_path)] == ["a", "b"]


def test_a_torn_last_line_is_ignored_then_repaired(tmp_path):
    with DatasetWriter(tmp_path) as writer:
        writer.add("a", "p", solid(0.1), solid(0.2))
    with open(tmp_path / METADATA_FILE, "ab") as handle:
        handle.write(b'{"id": "b", "prompt": "p", "inpu')  # the process died mid-append
    assert [s.id for s in open_dataset(tmp_path)] == ["a"]
    with DatasetWriter(tmp_path) as writer:
        writer.add("b", "p", solid(0.1), solid(0.2))
    lines = (tmp_path / METADATA_FILE).read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["a", "b"]


def test_a_complete_line_that_lost_its_newline_is_kept(tmp_path):
    with DatasetWriter(tmp_path) as writer:
        writer.add("a", "p", solid(0.1), solid(0.2))
    text = (tmp_path / METADATA_FILE).read_text()
    (tmp_path / METADATA_FILE).write_text(text.rstrip("\n"))
    with DatasetWriter(tmp_path) as writer:
        assert "a" in writer
        writer.add("b", "p", solid(0.1), solid(0.2))
    assert [s.id for s in open_dataset(tmp_path)] == ["a", "b"]


def test_only_one_writer_at_a_time(tmp_path):
    with DatasetWriter(tmp_path):
        with pytest.raises(RuntimeError, match="another process"):
            with DatasetWriter(tmp_path):
                pass


def test_bad_ids_and_reserved_fields_are_refused(tmp_path):
    with DatasetWriter(tmp_path) as writer:
        with pytest.raises(ValueError, match="slashes"):
            writer.add("a/b", "p", solid(0.1), solid(0.2))
        with pytest.raises(ValueError, match="set by add"):
            writer.add("c", "p", solid(0.1), solid(0.2), id="x")


def test_write_metadata_replaces_records_atomically(tmp_path):
    with DatasetWriter(tmp_path) as writer:
        writer.add("a", "", solid(0.1), solid(0.2))
    records = [json.loads(line) for line in (tmp_path / METADATA_FILE).read_text().splitlines()]
    records[0]["prompt"] = "make it jump"
    write_metadata(tmp_path, records)
    assert open_dataset(tmp_path)[0].prompt == "make it jump"


def test_hugging_face_parquet_layout(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    (tmp_path / "data").mkdir()
    (tmp_path / "side.png").write_bytes(png_bytes(0.9))
    table = pa.table({
        "id": ["x1", "x2"],
        "prompt": ["turn left", "sit down"],
        "input_image": [{"bytes": png_bytes(0.3), "path": None}, {"bytes": None, "path": "../side.png"}],
        "target_image": [{"bytes": png_bytes(0.7), "path": None}, {"bytes": png_bytes(0.5), "path": None}],
        "category": ["orientation", "pose"],
    })
    pq.write_table(table, tmp_path / "data" / "test-00000-of-00001.parquet")
    dataset = open_dataset(tmp_path)
    assert dataset.layout == "parquet" and [s.id for s in dataset] == ["x1", "x2"]
    assert dataset[0].category == "orientation"
    assert torch.allclose(dataset[0].input_image(), solid(0.3), atol=1 / 255)
    assert torch.allclose(dataset[1].input_image(), solid(0.9), atol=1 / 255)


def test_datasets_save_to_disk_arrow_layout(tmp_path):
    pa = pytest.importorskip("pyarrow")
    table = pa.table({"id": ["y"], "prompt": ["wave"], "input_image": [png_bytes(0.1)], "target_image": [png_bytes(0.2)]})
    with pa.OSFile(str(tmp_path / "data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as stream:
            stream.write_table(table)
    dataset = open_dataset(tmp_path)
    assert dataset.layout == "arrow" and dataset[0].prompt == "wave"
    assert torch.allclose(dataset[0].target_image(), solid(0.2), atol=1 / 255)


def test_missing_columns_and_missing_datasets_are_explained(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["z"], "text": ["?"]}), tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="missing column.*prompt, input_image, target_image"):
        open_dataset(tmp_path / "x.parquet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"metadata.jsonl.*\*\*/\*.parquet.*\*\*/\*.arrow"):
        open_dataset(tmp_path / "empty")


def test_a_missing_image_file_names_the_sample(tmp_path):
    with DatasetWriter(tmp_path) as writer:
        writer.add("a", "p", solid(0.1), solid(0.2))
    (tmp_path / "images" / "a_target.png").unlink()
    with pytest.raises(FileNotFoundError, match="a: target_image"):
        open_dataset(tmp_path)[0].target_image()


# Files stay inside the folders the user named -------------------------------------------------------
@pytest.mark.parametrize(("field", "value", "message"), [
    ("input_image", "../outside.png", "line 1: input_image '../outside.png': resolves outside"),
    ("target_image", "images/../../outside.png", "line 1: target_image 'images/../../outside.png': resolves outside"),
    ("input_image", "ABSOLUTE", "resolves outside"),
    ("input_image", "images/escape.png", "line 1: input_image 'images/escape.png': resolves outside"),  # a symlink out
    ("input_image", 7, "line 1: input_image: expected a path relative to"),
])
def test_a_dataset_never_reads_files_outside_its_folder(tmp_path, field, value, message):
    outside = tmp_path / "outside.png"
    outside.write_bytes(png_bytes(0.5))
    root = tmp_path / "dataset"
    (root / "images").mkdir(parents=True)
    (root / "images" / "in.png").write_bytes(png_bytes(0.2))
    (root / "images" / "escape.png").symlink_to(outside)
    record = {"id": "a", "prompt": "p", "input_image": "images/in.png", "target_image": "images/in.png"}
    record[field] = str(outside) if value == "ABSOLUTE" else value
    (root / METADATA_FILE).write_text(json.dumps(record) + "\n")
    with pytest.raises(ValueError, match=re.escape(message)):
        open_dataset(root)


def test_sample_ids_that_could_name_a_file_elsewhere_are_refused(tmp_path):
    from motionnft.data import EditSample
    from motionnft.evaluate import ProducedEdits

    made = ProducedEdits("model", tmp_path / "a" / "made", lambda sample: solid(0.5))
    for bad in ("../../x", "a/b", "..", ""):
        sample = EditSample(id=bad, prompt="p", input_source=png_bytes(0.2), target_source=png_bytes(0.2))
        with pytest.raises(ValueError, match="sample id .*cannot name a file"):
            made.obtain(sample)
    assert sorted(p.name for p in tmp_path.rglob("*.png")) == []
    with DatasetWriter(tmp_path / "written") as writer, pytest.raises(ValueError, match="cannot name a file"):
        writer.add("../up", "p", solid(0.1), solid(0.2))
