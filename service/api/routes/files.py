"""The Files API: POST /v1/files (multipart `file` and `purpose`), list, retrieve, content, delete."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import Response

from service.api.deps import jobs_of, list_page
from service.errors import InvalidRequestError, PayloadTooLargeError, ResourceNotFoundError
from service.jobs import FileRecord, check_upload

if TYPE_CHECKING:  # the runtime imports the endpoints' preparation from routes
    from service.api.jobs import JobsRuntime

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["files"])

_CHUNK = 1 << 20


async def _read_capped(upload: UploadFile, max_bytes: int) -> bytes:
    """The upload's bytes, refused with 413 as soon as they pass the cap."""
    parts, size = [], 0
    while chunk := await upload.read(_CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLargeError(
                f"The file is larger than {max_bytes} bytes, the most accepted.", param="file"
            )
        parts.append(chunk)
    return b"".join(parts)


async def _file(jobs: JobsRuntime, file_id: str) -> FileRecord:
    record = await jobs.store.get_file(file_id)
    if record is None:
        raise ResourceNotFoundError("file", file_id, param="file_id")
    return record


@router.post("/files")
async def create_file(
    request: Request,
    file: Annotated[UploadFile, File()],
    purpose: Annotated[str, Form()],
) -> dict[str, Any]:
    jobs = jobs_of(request)
    settings = jobs.settings
    content = await _read_capped(file, settings.files_max_bytes)
    check_upload(
        content,
        purpose,
        max_bytes=settings.files_max_bytes,
        max_lines=settings.files_max_lines,
    )
    record = await jobs.store.add_file(
        content, filename=file.filename or "upload.jsonl", purpose=purpose
    )
    return record.to_json()


@router.get("/files")
async def list_files(
    request: Request,
    purpose: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    after: str | None = None,
    order: Literal["asc", "desc"] = "desc",
) -> dict[str, Any]:
    files, more = await jobs_of(request).store.list_files(
        purpose=purpose, limit=limit, after=after, ascending=order == "asc"
    )
    return list_page([f.to_json() for f in files], more)


@router.get("/files/{file_id}")
async def retrieve_file(request: Request, file_id: str) -> dict[str, Any]:
    return (await _file(jobs_of(request), file_id)).to_json()


@router.get("/files/{file_id}/content")
async def file_content(request: Request, file_id: str) -> Response:
    jobs = jobs_of(request)
    await _file(jobs, file_id)
    try:
        content = await jobs.store.read_content(file_id)
    except FileNotFoundError as exc:
        raise InvalidRequestError(f"The content of {file_id} is gone.", param="file_id") from exc
    return Response(content, media_type="application/jsonl")


@router.delete("/files/{file_id}")
async def delete_file(request: Request, file_id: str) -> dict[str, Any]:
    jobs = jobs_of(request)
    await _file(jobs, file_id)
    await jobs.store.delete_file(file_id)
    return {"id": file_id, "object": "file", "deleted": True}
