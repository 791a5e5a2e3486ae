"""The Files API: POST /v1/files (multipart `file` and `purpose`), list, retrieve, content, delete."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.datastructures import UploadFile

from service.api.deps import CallerDep, FilesDep
from service.errors import InvalidRequestError, PayloadTooLargeError
from service.serving.protocol import ExpiresAfter

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["files"])

_CHUNK = 1 << 20
# file, purpose, expires_after[anchor], expires_after[seconds], and room for a client's extras.
_MAX_FORM_FIELDS = 8


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


# The form as OpenAI documents it (the route parses it itself, bounded).
_UPLOAD_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": ["batch", "fine-tune"]},
                        "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
                        "expires_after[seconds]": {
                            "type": "integer",
                            "minimum": 3600,
                            "maximum": 2592000,
                        },
                    },
                }
            }
        },
    }
}


@router.post("/files", openapi_extra=_UPLOAD_FORM)
async def create_file(request: Request, files: FilesDep, caller: CallerDep) -> dict[str, Any]:
    # Parsed here, not by FastAPI, to bound the form: one file and a few fields.
    async with request.form(max_files=1, max_fields=_MAX_FORM_FIELDS) as form:
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, UploadFile):
            raise InvalidRequestError(
                "A multipart `file` field is required.",
                param="file",
                code="missing_required_parameter",
            )
        if not isinstance(purpose, str):
            raise InvalidRequestError(
                "A `purpose` field is required.", param="purpose", code="missing_required_parameter"
            )
        expires_after = ExpiresAfter.from_form(
            form.get("expires_after[anchor]"), form.get("expires_after[seconds]")
        )
        content = await _read_capped(upload, files.settings.files_max_bytes)
        filename = upload.filename or "upload.jsonl"
    return await files.create(
        content, filename=filename, purpose=purpose, expires_after=expires_after, caller=caller
    )


@router.get("/files")
async def list_files(
    files: FilesDep,
    caller: CallerDep,
    purpose: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    after: str | None = None,
    order: Literal["asc", "desc"] = "desc",
) -> dict[str, Any]:
    return await files.list(caller, purpose=purpose, limit=limit, after=after, ascending=order == "asc")


@router.get("/files/{file_id}")
async def retrieve_file(file_id: str, files: FilesDep, caller: CallerDep) -> dict[str, Any]:
    return await files.retrieve(file_id, caller)


@router.get("/files/{file_id}/content")
async def file_content(file_id: str, files: FilesDep, caller: CallerDep) -> Response:
    return Response(await files.content(file_id, caller), media_type="application/jsonl")


@router.delete("/files/{file_id}")
async def delete_file(file_id: str, files: FilesDep, caller: CallerDep) -> dict[str, Any]:
    return await files.delete(file_id, caller)
