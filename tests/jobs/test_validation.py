"""Upload and batch-line checks, without a server."""

from __future__ import annotations

import json

import pytest

from service.errors import InvalidRequestError, PayloadTooLargeError
from service.jobs import check_upload, output_line, validate_lines


def _jsonl(*objects: object) -> bytes:
    return "".join(json.dumps(o) + "\n" for o in objects).encode()


def test_blank_lines_are_skipped_but_counted_in_line_numbers() -> None:
    with pytest.raises(InvalidRequestError, match="Line 3 is not valid JSON"):
        check_upload(b'{"a": 1}\n\n{oops\n', "batch", max_bytes=100, max_lines=10)


def test_caps() -> None:
    with pytest.raises(PayloadTooLargeError):
        check_upload(_jsonl({"a": "x" * 50}), "batch", max_bytes=10, max_lines=10)
    with pytest.raises(InvalidRequestError, match="more than 2 lines"):
        check_upload(_jsonl({}, {}, {}), "batch", max_bytes=1000, max_lines=2)
    with pytest.raises(InvalidRequestError, match="not UTF-8"):
        check_upload(b"\xff\xfe", "batch", max_bytes=1000, max_lines=2)
    with pytest.raises(InvalidRequestError, match="no lines"):
        check_upload(b"\n\n", "batch", max_bytes=1000, max_lines=2)


def test_batch_lines_in_order_with_their_problems() -> None:
    good = {"method": "POST", "url": "/v1/completions", "body": {"model": "m"}}
    lines, problems = validate_lines(
        _jsonl(good | {"custom_id": "a"}, good | {"custom_id": "b"}), "/v1/completions"
    )
    assert problems == [] and [(x.idx, x.custom_id) for x in lines] == [(0, "a"), (1, "b")]
    bad = _jsonl(good | {"custom_id": "a"}, good | {"custom_id": "a", "method": "GET"}, {"custom_id": 3})
    lines, problems = validate_lines(bad, "/v1/completions")
    assert lines == []
    codes = {(p["code"], p["line"]) for p in problems}
    assert {("duplicate_custom_id", 2), ("invalid_method", 2), ("mismatched_endpoint", 3)} <= codes
    assert ("missing_required_parameter", 3) in codes


def test_output_lines_carry_the_error_of_a_failed_request() -> None:
    ok = output_line("a", 200, {"id": "cmpl-1", "choices": []})
    assert ok["error"] is None and ok["response"]["request_id"] == "cmpl-1"
    failed = output_line("b", 404, {"error": {"code": "model_not_found", "message": "no"}})
    assert failed["error"] == {"code": "model_not_found", "message": "no"}
    assert failed["response"]["status_code"] == 404
