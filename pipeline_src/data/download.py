"""HTTP download into a `.part` file: streamed, resumable by Range, retried with backoff, checked for size and type.

What this module guarantees: when `http_download` returns, `part` holds exactly the number of bytes the server
announced (and the registry's size, where one is given). What it does not do: hash checking and moving the file
into place; fetch.py does that, so that nothing unverified ever carries the final name.

`check_magic` tells an archive from what hosts send instead: a Google Drive quota or virus-scan page, a
sync.com web app, any HTML page saved under a `.zip` name.
"""
from __future__ import annotations

import contextlib
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline_src.errors import PipelineError

# Status codes worth another try (timeouts, rate limits, server trouble); any other 4xx/5xx fails at once.
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})

# Leading bytes of each archive type; tar's "ustar" sits at offset 257 (POSIX header).
MAGIC: dict[str, tuple[tuple[int, bytes], ...]] = {
    "zip": ((0, b"PK\x03\x04"), (0, b"PK\x05\x06")),  # local file header; empty archive
    "tar.gz": ((0, b"\x1f\x8b"),),
    "tar": ((257, b"ustar"),),
    "rar": ((0, b"Rar!\x1a\x07"),),
}

# Text found in the pages hosts serve in place of a file, and what each means for the user.
_PAGE_KINDS = (
    (re.compile(rb"too many users have viewed or downloaded|quota (has been )?exceeded", re.I),
     "a Google Drive download-quota page (the file was downloaded too often; the quota resets within 24 h)"),
    (re.compile(rb"can(no|')t scan this file for viruses|virus scan warning", re.I),
     "a Google Drive virus-scan warning page (large files need a confirmation click in a browser)"),
    (re.compile(rb"sync\.com", re.I), "a sync.com web page (sync.com shares need a browser)"),
    (re.compile(rb"pan\.baidu\.com|baidu", re.I), "a Baidu pan page (needs the Baidu client or a login)"),
)


class DownloadError(PipelineError, RuntimeError):
    """A download that failed; the message names the URL and, where there is one, the local file."""


class HtmlInsteadOfFile(DownloadError):
    """The host answered with a web page where a file was expected."""


class UnexpectedFileType(DownloadError):
    """The bytes are not the archive type the registry names."""


class SizeMismatch(DownloadError):
    """The server's or the file's size differs from the registry's."""


@dataclass(frozen=True)
class DownloadResult:
    url: str
    path: Path
    size: int
    resumed_from: int  # bytes already in the .part file when this call started (0 = fresh download)


def http_download(url: str, part: Path, *, expected_size: int | None = None, retries: int = 4,
                  backoff_s: float = 2.0, timeout_s: float = 60.0, chunk_bytes: int = 1 << 20,
                  session=None) -> DownloadResult:
    """Download `url` into `part`, resuming from its current length with an HTTP Range request.

    Connection errors, cut transfers and RETRY_STATUS answers are retried `retries` times, waiting
    backoff_s * 2**k; each retry resumes where the last stopped. On final failure the `.part` file stays so
    the next call resumes it. A server that ignores Range (200 instead of 206) restarts the file from zero.
    """
    import requests

    part = Path(part)
    part.parent.mkdir(parents=True, exist_ok=True)
    started_with = part.stat().st_size if part.exists() else 0
    failures = 0
    with contextlib.nullcontext(session) if session is not None else _session() as http:
        while True:
            try:
                size = _transfer(http, url, part, expected_size, timeout_s, chunk_bytes)
                return DownloadResult(url=url, path=part, size=size, resumed_from=started_with)
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                    _Retryable) as e:
                failures += 1
                if failures > retries:
                    kept = part.stat().st_size if part.exists() else 0
                    raise DownloadError(
                        f"{url}: gave up after {failures} attempts ({type(e).__name__}: {e}); {kept} bytes kept "
                        f"in {part}, the next call resumes from there") from e
                wait = backoff_s * 2 ** (failures - 1)
                print(f"  {url}: {type(e).__name__}: {e}; retry {failures}/{retries} in {wait:.1f} s",
                      file=sys.stderr)
                time.sleep(wait)
            except requests.RequestException as e:  # a bad URL, too many redirects: another try will not help
                raise DownloadError(f"{url}: {type(e).__name__}: {e}") from e


class _Retryable(Exception):
    """A transient failure (status in RETRY_STATUS, or fewer bytes than announced)."""


def _session():
    import requests

    s = requests.Session()
    s.headers["User-Agent"] = f"pipeline_src-fetch (python-requests {requests.__version__})"
    # The file's bytes as stored: Content-Length and Range count those, not a decompressed stream.
    s.headers["Accept-Encoding"] = "identity"
    return s


def _transfer(session, url: str, part: Path, expected_size: int | None, timeout_s: float, chunk_bytes: int) -> int:
    """One GET; appends to `part` on 206, rewrites it on 200. Returns the final length of `part`."""
    offset = part.stat().st_size if part.exists() else 0
    if expected_size is not None and offset > expected_size:
        part.unlink()  # longer than the file can be: not a prefix of it
        offset = 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with session.get(url, headers=headers, stream=True, timeout=(timeout_s, timeout_s)) as r:
        if r.status_code == 416 and offset:
            total = _content_range_total(r.headers.get("Content-Range"))
            if total != offset:
                part.unlink()
                raise _Retryable(f"HTTP 416 for bytes={offset}- (server size {total}); restarting from zero")
            # else: the .part file already holds the whole file
        else:
            total = _receive(r, url, part, offset, expected_size, chunk_bytes)
    size = part.stat().st_size
    if total is not None and size != total:
        raise _Retryable(f"connection closed after {size} of {total} bytes")
    if expected_size is not None and size != expected_size:
        part.unlink()
        raise SizeMismatch(f"{url}: downloaded {size} bytes, the registry expects {expected_size}")
    return size


def _receive(r, url: str, part: Path, offset: int, expected_size: int | None, chunk_bytes: int) -> int | None:
    """Check the response's status and announced size, then stream its body; returns the announced total."""
    if r.status_code in RETRY_STATUS:
        raise _Retryable(f"HTTP {r.status_code} {r.reason}")
    if r.status_code >= 400:
        raise DownloadError(f"{url}: HTTP {r.status_code} {r.reason}")
    if r.status_code == 206:
        start = _content_range_start(r.headers.get("Content-Range"))
        if start != offset:
            part.unlink()
            raise _Retryable(f"asked for bytes from {offset}, the server sent from {start}; restarting from zero")
        mode = "ab"
    else:
        offset, mode = 0, "wb"  # the server ignored Range: start over
    announced = r.headers.get("Content-Length")
    total = offset + int(announced) if announced is not None else None
    if expected_size is not None and total is not None and total != expected_size:
        if part.exists():
            part.unlink()
        raise SizeMismatch(f"{url}: the server announces {total} bytes, the registry expects {expected_size}; "
                           "the registry's size or the URL is wrong")
    _stream(r, part, mode, offset, total, chunk_bytes)
    return total


def _stream(response, part: Path, mode: str, offset: int, total: int | None, chunk_bytes: int) -> None:
    from tqdm import tqdm
    from urllib3.exceptions import ProtocolError, ReadTimeoutError

    # A bar only on a terminal: under Snakemake, DVC or CI it would fill the logs with carriage returns.
    with open(part, mode) as f, tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                                     desc=part.name.removesuffix(".part"), file=sys.stderr,
                                     disable=not sys.stderr.isatty(), leave=False) as bar:
        try:
            # read1 hands over whatever has arrived, so a cut transfer keeps every byte it received
            # (iter_content would drop a partly filled chunk). The file's own bytes: no content decoding.
            while chunk := response.raw.read1(chunk_bytes, decode_content=False):
                f.write(chunk)
                bar.update(len(chunk))
        except (ProtocolError, ReadTimeoutError) as e:
            raise _Retryable(f"transfer broken after {f.tell()} bytes ({e})") from e


def _content_range_start(value: str | None) -> int | None:
    m = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", (value or "").strip())
    return int(m.group(1)) if m else None


def _content_range_total(value: str | None) -> int | None:
    m = re.fullmatch(r"bytes (\*|\d+-\d+)/(\d+)", (value or "").strip())
    return int(m.group(2)) if m else None


# ------------------------------------------------------------------------------------------ file type
def check_magic(path: Path, archive: str) -> None:
    """Raise HtmlInsteadOfFile for a web page, UnexpectedFileType for bytes that are not `archive`.

    `archive="file"` (weights, single files) only rules out web pages: a .pth may be a zip or a pickle.
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(64 * 1024)
    if looks_like_html(head):
        raise HtmlInsteadOfFile(f"{path}: is {describe_page(head)}, not the {archive} file "
                                f"({path.stat().st_size} bytes of HTML)")
    if archive == "file":
        return
    if not any(head[at:at + len(magic)] == magic for at, magic in MAGIC[archive]):
        raise UnexpectedFileType(f"{path}: not a {archive} archive (starts with {head[:8]!r}; a {archive} "
                                 f"starts with {' or '.join(repr(m) for _, m in MAGIC[archive])})")


def looks_like_html(head: bytes) -> bool:
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return start.startswith((b"<!doctype html", b"<html", b"<head", b"<!--", b"<?xml")) or b"<html" in start[:1024]


def describe_page(head: bytes) -> str:
    for pattern, meaning in _PAGE_KINDS:
        if pattern.search(head):
            return meaning
    return "an HTML page"
