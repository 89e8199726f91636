from eds.io import appending, read_records


def test_a_line_cut_by_a_crash_is_redone_and_the_next_record_starts_clean(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text('{"key": "a", "v": 1}\n{"key": "b", "v"')  # killed while writing b
    assert read_records(path) == {"a": {"key": "a", "v": 1}}
    with appending(path) as write:
        write({"key": "b", "v": 2})
    assert read_records(path) == {"a": {"key": "a", "v": 1}, "b": {"key": "b", "v": 2}}
    with appending(None) as write:  # no file: records are dropped, nothing is written anywhere
        write({"key": "c"})
    assert read_records(tmp_path / "missing.jsonl") == {}
