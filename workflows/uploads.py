"""Receiving one scan over HTTP into a private directory, never more than a byte limit.

``pad serve`` takes a scan either as a multipart upload (``curl -F file=@scan.ply``, the file
part's own name kept) or as the raw request body with the name in the query
(``POST /predict?filename=scan.ply``). Either way the bytes are streamed, counted and written to
``<directory>/<name>`` as they arrive: an upload is refused (413) as soon as it passes the limit,
and never held whole in memory. The name keeps its extension, which tells ``pad predict``'s
readers the format.
"""
from __future__ import annotations

import os
from typing import AsyncIterable

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

MAX_NAME = 200  # bytes (UTF-8) of an uploaded file's name


class UploadError(Exception):
    """An upload the service refuses: ``status`` (HTTP) and a one-line ``message``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = int(status)
        self.message = " ".join(str(message).split())


def upload_name(raw: str) -> str:
    """The name an upload is stored under: the last component of ``raw`` (either slash), without
    control characters; UploadError (400) for an empty, ``.``/``..`` or overlong name."""
    base = str(raw).replace("\\", "/").rsplit("/", 1)[-1].strip()
    base = "".join(c for c in base if c.isprintable())
    if base in ("", ".", ".."):
        raise UploadError(400, f"the upload's file name '{raw}' names no file (give it a name such as scan.ply)")
    if len(base.encode("utf-8", "surrogateescape")) > MAX_NAME:
        raise UploadError(400, f"the upload's file name is longer than {MAX_NAME} bytes")
    return base


def _create(directory: str, name: str):
    """A new file ``directory/name`` (mode 0600), opened for binary writing."""
    return os.fdopen(os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")


class _MultipartFile:
    """python-multipart callbacks that write the one file part of a form to ``directory``."""

    def __init__(self, directory: str):
        self.directory = directory
        self.name: str | None = None
        self.error: UploadError | None = None
        self.ended = False
        self._fh = None
        self._headers: dict[bytes, bytes] = {}
        self._field = b""
        self._value = b""

    def callbacks(self) -> dict:
        return {"on_part_begin": self._part_begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
                "on_part_end": self._part_end, "on_end": self._end}

    def _part_begin(self) -> None:
        self._headers = {}

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.strip().lower()] = self._value.strip()
        self._field, self._value = b"", b""

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        filename = params.get(b"filename")
        if filename is None or self.error is not None:
            return
        if self.name is not None:
            self.error = UploadError(400, "send one file per request (this upload has several)")
            return
        try:
            self.name = upload_name(filename.decode("utf-8", "replace"))
        except UploadError as exc:
            self.error = exc
            return
        self._fh = _create(self.directory, self.name)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._fh is not None:
            self._fh.write(data[start:end])

    def _part_end(self) -> None:
        self.close()

    def _end(self) -> None:
        self.ended = True

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


async def receive_upload(chunks: AsyncIterable[bytes], content_type: str | None, filename: str | None,
                         directory: str, limit: int) -> tuple[str, str]:
    """Stream an upload's body ``chunks`` into ``directory``; returns (its name, its path).

    ``content_type``: the request's header (``multipart/form-data; boundary=...`` for a form;
    anything else means a raw body, named by ``filename``, the query's ``filename``). UploadError:
    413 once more than ``limit`` bytes arrived, 400 for a form without exactly one file part, a
    malformed or cut-short form, or a raw body without a name."""
    kind, params = parse_options_header(content_type or "")
    form = None
    if kind == b"multipart/form-data":
        boundary = params.get(b"boundary")
        if not boundary:
            raise UploadError(400, "the multipart upload has no boundary in its Content-Type")
        form = _MultipartFile(directory)
        try:
            parser = MultipartParser(boundary, form.callbacks())
        except (FormParserError, ValueError) as exc:
            raise UploadError(400, f"the multipart upload cannot be read ({exc})") from None
        write = parser.write
        fh = None
    else:
        if not filename:
            raise UploadError(400, "say the file's name: POST /predict?filename=scan.ply with the file as the body, "
                                   "or upload it as a form (curl -F file=@scan.ply)")
        name = upload_name(filename)
        fh = _create(directory, name)
        write = fh.write
    received = 0
    try:
        async for chunk in chunks:
            received += len(chunk)
            if received > limit:
                raise UploadError(413, f"the upload is larger than the service takes ({limit} bytes, "
                                       "--max-upload-mb)")
            write(chunk)
            if form is not None and form.error is not None:
                raise form.error
        if form is not None:
            parser.finalize()
    except FormParserError as exc:   # from write (the form parser) or finalize
        raise UploadError(400, f"the multipart upload cannot be read ({exc})") from None
    finally:
        if fh is not None:
            fh.close()
        if form is not None:
            form.close()
    if form is None:
        return name, os.path.join(directory, name)
    if form.error is not None:
        raise form.error
    if not form.ended:
        raise UploadError(400, "the multipart upload ends before its closing boundary (cut short?)")
    if form.name is None:
        raise UploadError(400, "the multipart upload has no file part (send one: curl -F file=@scan.ply)")
    return form.name, os.path.join(directory, form.name)
