from pathlib import Path

import pytest

from clinie.inputs import InputPathError, read_inputs


def test_txt_folder_and_jsonl(tmp_path: Path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "b.txt").write_text("second", encoding="utf-8")
    (tmp_path / "notes" / "a.txt").write_bytes("first\r\nline é".encode())
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9 latin-1")
    jl = tmp_path / "n.jsonl"
    jl.write_bytes(
        b'{"note_id": "j1", "text": "hello"}\n'
        b"\n"
        b"{not json\n"
        b'{"note_id": 7}\n'
        b'{"note_id": "j3", "text": 5}\n'
        b'["list"]\n'
        b'{"text": "no id"}\n'
    )
    notes = read_inputs([tmp_path / "notes", tmp_path / "bad.txt", jl])
    got = [(n.note_id, n.text, n.error.code if n.error else None) for n in notes]
    assert got == [
        ("a", "first\r\nline é", None),
        ("b", "second", None),
        ("bad", None, "invalid_encoding"),
        ("j1", "hello", None),
        (None, None, "invalid_json"),
        ("7", None, "missing_text"),
        ("j3", None, "invalid_text"),
        (None, None, "invalid_json"),
        (None, "no id", None),
    ]
    # Error messages name the file and line, never the note text.
    assert all("latin" not in (n.error.message if n.error else "") for n in notes)


def test_bad_arguments_raise(tmp_path: Path):
    with pytest.raises(InputPathError, match="not found"):
        read_inputs([tmp_path / "missing.txt"])
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(InputPathError, match="unsupported"):
        read_inputs([tmp_path / "x.csv"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputPathError, match=r"no \.txt"):
        read_inputs([tmp_path / "empty"])
