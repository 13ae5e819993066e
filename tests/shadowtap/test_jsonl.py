import gzip
import os
import stat

import pytest

from shadowtap.errors import InputError
from shadowtap.jsonl import JsonlWriter, create_private, read_jsonl
from shadowtap.records import Exchange, Request, Response


def _exchange(i: int) -> Exchange:
    req = Request(
        ts=10.0 + i,
        end_ts=10.0 + i,
        version="1.1",
        headers=(("Host", "h"),),
        method="GET",
        target=f"/{i}",
    )
    resp = Response(
        ts=10.5 + i,
        end_ts=10.6 + i,
        version="1.1",
        headers=(),
        body=b"\xff\x00bin",
        body_len=5,
        status=200,
        reason="OK",
    )
    return Exchange(
        id=f"id{i}", client="1.2.3.4:5", server="[::1]:80", index=i, request=req, response=resp
    )


@pytest.mark.parametrize("name", ["x.jsonl", "x.jsonl.gz"])
def test_written_records_read_back_equal_and_private(tmp_path, name):
    path = str(tmp_path / name)
    os.umask(0o022)
    with JsonlWriter(path) as w:
        for i in range(3):
            w.write(_exchange(i).to_json())
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    got = list(read_jsonl(path, Exchange.from_json))
    assert got == [_exchange(i) for i in range(3)]
    assert got[0].response.body == b"\xff\x00bin"  # binary bodies survive (base64)


def test_existing_file_made_private_but_devices_left_alone(tmp_path):
    path = tmp_path / "old.jsonl"
    path.write_text("x")
    path.chmod(0o644)
    create_private(str(path)).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = stat.S_IMODE(os.stat("/dev/null").st_mode)
    create_private("/dev/null").close()
    assert stat.S_IMODE(os.stat("/dev/null").st_mode) == before


def test_malformed_lines_are_reported_with_their_number_and_the_rest_goes_on(tmp_path):
    path = tmp_path / "in.jsonl"
    good = __import__("orjson").dumps(_exchange(1).to_json()).decode()
    path.write_text(f'{good}\nnot json\n\n{{"schema": 1}}\n[1]\n{good}\n')
    errors: list[InputError] = []
    got = list(read_jsonl(str(path), Exchange.from_json, errors.append))
    assert len(got) == 2
    assert [e.where for e in errors] == [f"{path} line 2", f"{path} line 4", f"{path} line 5"]
    with pytest.raises(InputError, match="line 2"):
        list(read_jsonl(str(path), Exchange.from_json))


def test_truncated_gzip_yields_what_was_flushed_then_reports(tmp_path):
    path = str(tmp_path / "t.jsonl.gz")
    w = JsonlWriter(path, flush_interval=0)
    for i in range(5):
        w.write(_exchange(i).to_json())
    w.flush()  # as a crashed run leaves it: flushed, never closed
    errors: list[InputError] = []
    got = list(read_jsonl(path, Exchange.from_json, errors.append))
    assert [e.index for e in got] == list(range(5))
    assert errors and "unreadable" in errors[0].message
    w.close()
    with gzip.open(path) as f:
        assert len(f.read().splitlines()) == 5


def test_missing_input_names_the_file(tmp_path):
    with pytest.raises(InputError, match="nope.jsonl"):
        list(read_jsonl(str(tmp_path / "nope.jsonl"), Exchange.from_json))
