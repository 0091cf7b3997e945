"""fetch against a local HTTP server on 127.0.0.1 that serves archives built here: good download, checksum
mismatch, resume after a cut, HTML instead of the archive, manual hosts and pickup, unsafe archives, weights.

Nothing here talks to anything but 127.0.0.1: every registry is a temporary YAML pointing at the local server.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import tarfile
import threading
import zipfile
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from pipeline_src.cli import main
from pipeline_src.data import fetch as fetch_stage
from pipeline_src.data.archive import ArchiveToolMissing, UnsafeArchiveError, check_member, extract_rar
from pipeline_src.data.download import HtmlInsteadOfFile, UnexpectedFileType, check_magic
from pipeline_src.data.fetch import ChecksumMismatch, ExistingDataError, FetchError, ManualDownloadRequired, Options
from pipeline_src.data.registry import load_registry

QUOTA_PAGE = (b"<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head><body>"
              b"Too many users have viewed or downloaded this file recently.</body></html>")


# ------------------------------------------------------------------------------------- local server
@dataclass
class Route:
    body: bytes
    content_type: str = "application/octet-stream"
    status: int = 200
    cut_after: int | None = None  # send only this many body bytes, then close...
    cuts: int = 0  # ...for this many requests
    honour_range: bool = True
    busy: int = 0  # answer 503 to this many requests first


class LocalServer:
    """ThreadingHTTPServer on 127.0.0.1 with Range (206/416), cut responses and a request log."""

    def __init__(self):
        self.routes: dict[str, Route] = {}
        self.log: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                path = self.path.lstrip("/")
                server.log.append((path, self.headers.get("Range")))
                route = server.routes.get(path)
                if route is not None and route.busy > 0:
                    route.busy -= 1
                    self.send_error(503)
                    return
                if route is None or route.status != 200:
                    self.send_error(404 if route is None else route.status)
                    return
                body, start = route.body, 0
                wanted = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if wanted and route.honour_range:
                    start = int(wanted.group(1))
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                payload = body[start:]
                self.send_header("Content-Type", route.content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if route.cuts > 0:
                    route.cuts -= 1
                    payload = payload[:route.cut_after]
                self.wfile.write(payload)

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{path}"

    def requests_for(self, path: str) -> list[str | None]:
        return [rng for p, rng in self.log if p == path]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    # A proxy from the environment would carry 127.0.0.1 requests elsewhere.
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    s = LocalServer()
    yield s
    s.close()


# -------------------------------------------------------------------------------------- archives
def make_zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def make_tar(members: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tf.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tf.addfile(info, io.BytesIO(m[1]))
    return buf.getvalue()


def link(name: str, target: str, kind=tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# A dataset in the DPDD layout, big enough that a cut half-way leaves a real partial file.
DPDD_FILES = {
    "mini_dpdd/train_c/source/a.png": b"source" * 5000,
    "mini_dpdd/train_c/target/b.png": b"target" * 5000,
    "mini_dpdd/README.txt": b"tiny",
}
DPDD_ZIP = make_zip(DPDD_FILES)


def dataset(files: list[dict], root: str = "mini_dpdd", **extra) -> dict:
    entry = {"title": "test set", "task": "defocus_dual_pixel", "layout": "dpdd", "bit_depth": 16,
             "splits": {"train": 1}, "test_only": False, "licence": "test data", "mask_in_focus_value": None,
             "root_in_archive": root, "files": files}
    entry.update(extra)
    return entry


def archive_file(name: str, urls: list[str], archive: str = "zip", **extra) -> dict:
    return {"name": name, "urls": urls, "archive": archive, **extra}


def write_registry(tmp_path: Path, datasets: dict | None = None, weights: dict | None = None) -> Path:
    path = tmp_path / "datasets.yaml"
    path.write_text(yaml.safe_dump({"datasets": datasets or {}, "weights": weights or {}}))
    return path


def options(tmp_path: Path, registry: Path, **kw) -> Options:
    base = dict(root=tmp_path / "data", registry=registry, retries=2, backoff_s=0.01, timeout_s=5.0)
    base.update(kw)
    return Options(**base)


def do_fetch(tmp_path: Path, registry: Path, name: str, **kw) -> Path:
    return fetch_stage.fetch(load_registry(registry), name, options(tmp_path, registry, **kw))


def cli(tmp_path: Path, registry: Path, *argv: str) -> int:
    """`python -m pipeline_src fetch ...` in-process: exit 0, or 2 with one `error:` line (or manual steps)."""
    return main(["fetch", *argv, "--registry", str(registry), "--root", str(tmp_path / "data"),
                 "--backoff", "0.01", "--timeout", "5"])


def leftovers(data: Path) -> list[str]:
    """Temporary or partial names anywhere under data/."""
    return sorted(str(p.relative_to(data)) for p in data.rglob("*")
                  if p.name.endswith((".part", ".partial", ".tmp")) or ".extract-" in p.name)


# -------------------------------------------------------------------------------------------- tests
def test_good_download_is_verified_extracted_recorded_and_a_rerun_is_a_noop(tmp_path, server, capsys):
    server.routes["dpdd.zip"] = Route(DPDD_ZIP)
    reg = write_registry(tmp_path, {"mini": dataset([archive_file("mini.zip", [server.url("dpdd.zip")],
                                                                   sha256=sha256(DPDD_ZIP), size=len(DPDD_ZIP))])})
    raw = do_fetch(tmp_path, reg, "mini")

    data = tmp_path / "data"
    assert raw == data / "raw" / "mini"
    assert (raw / "train_c/source/a.png").read_bytes() == DPDD_FILES["mini_dpdd/train_c/source/a.png"]
    assert (raw / "README.txt").read_bytes() == b"tiny"
    assert (data / "downloads/mini.zip").read_bytes() == DPDD_ZIP
    record = json.loads((raw / ".fetched.json").read_text())
    assert record["files"] == [{"name": "mini.zip", "size": len(DPDD_ZIP), "sha256": sha256(DPDD_ZIP), "md5": None,
                                "source": server.url("dpdd.zip"), "check": "pinned sha256"}]
    assert record["root_in_archive"] == "mini_dpdd"
    assert leftovers(data) == []

    assert "%|" not in capsys.readouterr().err  # no progress bar when stderr is not a terminal
    before = len(server.log)
    assert cli(tmp_path, reg, "mini") == 0
    assert "already present and verified" in capsys.readouterr().out
    assert len(server.log) == before  # no request at all


def test_checksum_mismatch_is_a_clear_error_and_leaves_nothing_to_trust(tmp_path, server, capsys):
    server.routes["dpdd.zip"] = Route(DPDD_ZIP)
    wrong = "0" * 64
    files = [archive_file("mini.zip", [server.url("dpdd.zip")], sha256=wrong)]
    reg = write_registry(tmp_path, {"mini": dataset(files)})

    assert cli(tmp_path, reg, "mini") == 2
    err = capsys.readouterr().err
    assert f"sha256 {sha256(DPDD_ZIP)}" in err and f"pins {wrong}" in err and "nothing was extracted" in err
    data = tmp_path / "data"
    assert not (data / "raw" / "mini").exists()
    assert not (data / "downloads" / "mini.zip").exists()
    assert leftovers(data) == []
    assert not (data / "downloads" / "trusted-hashes.json").exists()

    # With the right hash pinned, the same call succeeds: nothing of the bad attempt is reused.
    reg = write_registry(tmp_path, {"mini": dataset([archive_file("mini.zip", [server.url("dpdd.zip")],
                                                                   sha256=sha256(DPDD_ZIP))])})
    assert cli(tmp_path, reg, "mini") == 0
    assert server.requests_for("dpdd.zip") == [None, None]


def test_trust_on_first_use_records_the_hash_and_refuses_a_changed_file(tmp_path, server, capsys):
    server.routes["dpdd.zip"] = Route(DPDD_ZIP)
    reg = write_registry(tmp_path, {"mini": dataset([archive_file("mini.zip", [server.url("dpdd.zip")])])})
    do_fetch(tmp_path, reg, "mini")
    out = capsys.readouterr().out
    assert f"set `sha256: {sha256(DPDD_ZIP)}`" in out and str(reg) in out

    store = tmp_path / "data/downloads/trusted-hashes.json"
    trusted = json.loads(store.read_text())["files"]["mini.zip"]
    assert trusted["sha256"] == sha256(DPDD_ZIP) and trusted["size"] == len(DPDD_ZIP)
    assert trusted["source"] == server.url("dpdd.zip")

    # The server now sends other bytes; a fresh fetch must refuse them and extract nothing.
    changed = make_zip({"mini_dpdd/evil.txt": b"changed"})
    server.routes["dpdd.zip"] = Route(changed)
    for p in (tmp_path / "data/raw/mini", tmp_path / "data/downloads/mini.zip"):
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    with pytest.raises(ChecksumMismatch, match="trusted on first use") as e:
        do_fetch(tmp_path, reg, "mini")
    assert "trusted-hashes.json" in str(e.value) and sha256(changed) in str(e.value)
    assert not (tmp_path / "data/raw/mini").exists()
    assert not (tmp_path / "data/downloads/mini.zip").exists()
    assert json.loads(store.read_text())["files"]["mini.zip"]["sha256"] == sha256(DPDD_ZIP)


def test_a_cut_transfer_resumes_with_a_range_request(tmp_path, server):
    half = len(DPDD_ZIP) // 2
    server.routes["dpdd.zip"] = Route(DPDD_ZIP, cut_after=half, cuts=1)
    reg = write_registry(tmp_path, {"mini": dataset([archive_file("mini.zip", [server.url("dpdd.zip")],
                                                                   sha256=sha256(DPDD_ZIP))])})
    do_fetch(tmp_path, reg, "mini")
    assert server.requests_for("dpdd.zip") == [None, f"bytes={half}-"]
    assert (tmp_path / "data/downloads/mini.zip").read_bytes() == DPDD_ZIP
    assert (tmp_path / "data/raw/mini/train_c/target/b.png").is_file()


def test_a_failed_call_keeps_the_part_file_and_the_next_call_resumes_it(tmp_path, server, capsys):
    third = len(DPDD_ZIP) // 3
    server.routes["dpdd.zip"] = Route(DPDD_ZIP, cut_after=third, cuts=1)
    reg = write_registry(tmp_path, {"mini": dataset([archive_file("mini.zip", [server.url("dpdd.zip")],
                                                                   sha256=sha256(DPDD_ZIP))])})
    assert cli(tmp_path, reg, "mini", "--retries", "0") == 2
    part = tmp_path / "data/downloads/mini.zip.part"
    assert part.read_bytes() == DPDD_ZIP[:third]
    assert "the next call resumes" in capsys.readouterr().err
    assert not (tmp_path / "data/raw/mini").exists()

    assert cli(tmp_path, reg, "mini") == 0
    assert server.requests_for("dpdd.zip") == [None, f"bytes={third}-"]
    assert not part.exists()


def test_a_busy_server_is_retried(tmp_path, server, capsys):
    server.routes["dpdd.zip"] = Route(DPDD_ZIP, busy=2)
    reg = write_registry(tmp_path, {"mini": dataset([archive_file("mini.zip", [server.url("dpdd.zip")])])})
    assert cli(tmp_path, reg, "mini", "--retries", "2") == 0
    assert len(server.requests_for("dpdd.zip")) == 3
    assert "HTTP 503" in capsys.readouterr().err


def test_a_server_that_ignores_range_gets_the_file_from_the_start(tmp_path, server):
    server.routes["dpdd.zip"] = Route(DPDD_ZIP, honour_range=False)
    downloads = tmp_path / "data/downloads"
    downloads.mkdir(parents=True)
    (downloads / "mini.zip.part").write_bytes(DPDD_ZIP[:100])
    reg = write_registry(tmp_path, {"mini": dataset([archive_file("mini.zip", [server.url("dpdd.zip")],
                                                                   sha256=sha256(DPDD_ZIP))])})
    do_fetch(tmp_path, reg, "mini")
    assert server.requests_for("dpdd.zip") == ["bytes=100-"]
    assert (downloads / "mini.zip").read_bytes() == DPDD_ZIP


def test_an_html_page_instead_of_the_zip_asks_for_a_manual_download_then_picks_it_up(tmp_path, server, capsys):
    server.routes["quota"] = Route(QUOTA_PAGE, content_type="text/html; charset=utf-8")
    reg = write_registry(tmp_path, {"mini": dataset([archive_file("mini.zip", [server.url("quota")])])})
    assert cli(tmp_path, reg, "mini") == 2
    err = capsys.readouterr().err
    target = (tmp_path / "data/downloads/mini.zip").resolve()
    assert "Google Drive download-quota page" in err
    assert f"save as: {target}" in err and f"open:    {server.url('quota')}" in err
    assert f"fetch mini --root {tmp_path / 'data'} --registry {reg}" in err
    assert not target.exists() and leftovers(tmp_path / "data") == []
    assert not (tmp_path / "data/downloads/trusted-hashes.json").exists()

    target.write_bytes(DPDD_ZIP)  # the person downloads it by hand
    assert cli(tmp_path, reg, "mini") == 0
    assert (tmp_path / "data/raw/mini/train_c/source/a.png").is_file()
    assert server.requests_for("quota") == [None]  # picked up, not downloaded again


def test_a_manual_only_host_says_what_to_download_and_where_then_picks_it_up(tmp_path, server, capsys):
    manual = {"url": "https://ln2.sync.com/dl/example", "note": "sync.com serves a JavaScript app, not the file"}
    reg = write_registry(tmp_path, {"mini": dataset([archive_file("mini.zip", [], manual=manual,
                                                                   sha256=sha256(DPDD_ZIP))])})
    assert cli(tmp_path, reg, "--list") == 0
    assert re.search(r"^mini\s+dataset\s+manual\s", capsys.readouterr().out, re.M)

    with pytest.raises(ManualDownloadRequired):
        do_fetch(tmp_path, reg, "mini")
    capsys.readouterr()
    assert cli(tmp_path, reg, "mini") == 2
    err = capsys.readouterr().err
    target = (tmp_path / "data/downloads/mini.zip").resolve()
    assert "mini.zip" in err and manual["url"] in err and manual["note"] in err
    assert f"save as: {target}" in err and "picks the file(s) up from there" in err

    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(make_zip({"mini_dpdd/x.png": b"not the pinned file"}))
    assert cli(tmp_path, reg, "mini") == 2  # a wrong file placed by hand is named, not extracted
    assert "remove or replace it" in capsys.readouterr().err
    assert not (tmp_path / "data/raw/mini").exists()

    target.write_bytes(DPDD_ZIP)
    assert cli(tmp_path, reg, "mini") == 0
    assert (tmp_path / "data/raw/mini/README.txt").read_bytes() == b"tiny"
    assert server.log == []


def test_bytes_of_another_archive_type_are_named(tmp_path):
    p = tmp_path / "x.zip"
    p.write_bytes(make_tar([("x", b"x")]))
    with pytest.raises(UnexpectedFileType, match=r"not a zip archive \(starts with b[\"']\\x1f\\x8b"):
        check_magic(p, "zip")
    check_magic(p, "tar.gz")


def test_html_saved_under_a_zip_name_is_recognised(tmp_path):
    p = tmp_path / "x.zip"
    p.write_bytes(b"\n  " + QUOTA_PAGE)
    with pytest.raises(HtmlInsteadOfFile, match="quota"):
        check_magic(p, "zip")
    p.write_bytes(b"<html><body>We can't scan this file for viruses.</body></html>")
    with pytest.raises(HtmlInsteadOfFile, match="virus-scan"):
        check_magic(p, "file")


def test_a_zip_slip_archive_is_refused_and_nothing_is_written(tmp_path, server):
    evil = make_zip({"mini_dpdd/ok.txt": b"fine", "mini_dpdd/../../../escaped.txt": b"pwned"})
    server.routes["evil.zip"] = Route(evil)
    reg = write_registry(tmp_path, {"mini": dataset([archive_file("mini.zip", [server.url("evil.zip")])])})
    with pytest.raises(UnsafeArchiveError, match=r"contains '\.\.'"):
        do_fetch(tmp_path, reg, "mini")
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not (tmp_path / "data/raw/mini").exists()
    assert leftovers(tmp_path / "data") == []


@pytest.mark.parametrize("member, message", [
    (link("mini_dpdd/up", "../../outside"), "outside the target"),
    (link("mini_dpdd/abs", "/etc/passwd"), "outside the target"),
    (link("mini_dpdd/hard", "../outside", tarfile.LNKTYPE), "outside the target"),
    (tarfile.TarInfo("/abs/file.txt"), "absolute path"),
])
def test_a_tar_with_an_outward_link_or_absolute_path_is_refused(tmp_path, server, member, message, capsys):
    evil = make_tar([("mini_dpdd/ok.txt", b"fine"), member])
    server.routes["evil.tar.gz"] = Route(evil)
    reg = write_registry(tmp_path, {"mini": dataset([archive_file("mini.tgz", [server.url("evil.tar.gz")],
                                                                   archive="tar.gz")])})
    assert cli(tmp_path, reg, "mini") == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "data/raw/mini").exists()
    assert leftovers(tmp_path / "data") == []


def test_an_inward_link_in_a_tar_is_kept(tmp_path):
    archive = tmp_path / "ok.tar"
    archive.write_bytes(make_tar([("d/file.txt", b"x"), link("d/alias.txt", "file.txt")], mode="w"))
    out = tmp_path / "out"
    out.mkdir()
    from pipeline_src.data.archive import extract

    extract(archive, out, "tar")
    assert (out / "d/alias.txt").is_symlink() and (out / "d/alias.txt").read_bytes() == b"x"


def zip_with_symlink(name: str, target: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("d/file.txt", b"x")
        info = zipfile.ZipInfo(name)
        info.external_attr = (0o120777 << 16)  # S_IFLNK | rwxrwxrwx, as Info-ZIP stores links
        zf.writestr(info, target)
    return buf.getvalue()


def test_zip_links_are_made_when_inward_and_refused_when_outward(tmp_path):
    from pipeline_src.data.archive import extract

    ok, out = tmp_path / "ok.zip", tmp_path / "out"
    ok.write_bytes(zip_with_symlink("d/alias.txt", "file.txt"))
    out.mkdir()
    extract(ok, out, "zip")
    assert (out / "d/alias.txt").is_symlink() and (out / "d/alias.txt").read_bytes() == b"x"

    evil = tmp_path / "evil.zip"
    evil.write_bytes(zip_with_symlink("d/up", "../../etc"))
    with pytest.raises(UnsafeArchiveError, match="is a link to '../../etc', outside the target"):
        extract(evil, tmp_path / "out2", "zip")
    assert not (tmp_path / "out2").exists()


@pytest.mark.parametrize("name", ["/etc/x", "C:/x", "a/../../x", "..\\x"])
def test_check_member_refuses_paths_that_leave_the_target(name):
    with pytest.raises(UnsafeArchiveError):
        check_member(Path("a.zip"), name)
    check_member(Path("a.zip"), "a/b..c/d.txt")  # dots inside a name are fine


def test_two_archives_merge_into_one_root_and_tar_gz_works(tmp_path, server):
    images = make_zip({"image/out_of_focus0001.jpg": b"jpg"})
    masks = make_tar([("gt/out_of_focus0001.png", b"png")])
    server.routes["img.zip"], server.routes["gt.tgz"] = Route(images), Route(masks)
    reg = write_registry(tmp_path, {"blur": dataset(
        [archive_file("img.zip", [server.url("img.zip")]), archive_file("gt.tgz", [server.url("gt.tgz")], "tar.gz")],
        root=".", task="blur_detection", layout="cuhk", bit_depth=8, mask_in_focus_value=0)})
    raw = do_fetch(tmp_path, reg, "blur")
    assert (raw / "image/out_of_focus0001.jpg").read_bytes() == b"jpg"
    assert (raw / "gt/out_of_focus0001.png").read_bytes() == b"png"
    record = json.loads((raw / ".fetched.json").read_text())
    assert [f["name"] for f in record["files"]] == ["img.zip", "gt.tgz"]


def test_root_aliases_take_a_repacked_mirror_and_a_missing_root_is_named(tmp_path, server):
    server.routes["repacked.zip"] = Route(make_zip({"DPDD/train_c/source/a.png": b"a"}))
    files = [archive_file("mini.zip", [server.url("repacked.zip")])]
    reg = write_registry(tmp_path, {"mini": dataset(files, root="dd_dp_dataset_canon", root_aliases=["DPDD"])})
    assert (do_fetch(tmp_path, reg, "mini") / "train_c/source/a.png").read_bytes() == b"a"

    reg = write_registry(tmp_path, {"other": dataset([archive_file("other.zip", [server.url("repacked.zip")])],
                                                     root="dd_dp_dataset_canon")})
    with pytest.raises(FetchError, match=r"top level holds \['DPDD'\]"):
        do_fetch(tmp_path, reg, "other")
    assert not (tmp_path / "data/raw/other").exists()
    assert leftovers(tmp_path / "data") == []


def test_published_md5_is_checked(tmp_path, server):
    server.routes["k.zip"] = Route(DPDD_ZIP)
    good = hashlib.md5(DPDD_ZIP).hexdigest()
    reg = write_registry(tmp_path, {"k": dataset([archive_file("k.zip", [server.url("k.zip")], md5="f" * 32)])})
    with pytest.raises(ChecksumMismatch, match=f"md5 {good}, but datasets.k expects the published f+"):
        do_fetch(tmp_path, reg, "k")
    reg = write_registry(tmp_path, {"k": dataset([archive_file("k.zip", [server.url("k.zip")], md5=good)])})
    do_fetch(tmp_path, reg, "k")
    record = json.loads((tmp_path / "data/raw/k/.fetched.json").read_text())
    assert record["files"][0]["md5"] == good and record["files"][0]["check"] == "md5 + sha256 recorded on first use"


def test_wrong_size_or_wrong_type_from_every_url_is_reported(tmp_path, server, capsys):
    tar = make_tar([("x", b"x")])
    server.routes["dpdd.zip"] = Route(DPDD_ZIP)
    server.routes["a.tgz"] = Route(tar)
    reg = write_registry(tmp_path, {"mini": dataset([archive_file(
        "mini.zip", [server.url("dpdd.zip"), server.url("a.tgz")], size=len(tar))])})
    assert cli(tmp_path, reg, "mini") == 2  # a non-archive answer makes it a case for a person
    err = capsys.readouterr().err
    assert f"the server announces {len(DPDD_ZIP)} bytes, the registry expects {len(tar)}" in err
    assert "not a zip archive" in err
    assert leftovers(tmp_path / "data") == [] and not (tmp_path / "data/downloads/mini.zip").exists()


def test_a_dead_url_falls_back_to_the_mirror_and_mirror_selects_urls(tmp_path, server, capsys):
    server.routes["dead.zip"] = Route(b"", status=404)
    server.routes["mirror.zip"] = Route(DPDD_ZIP)
    files = [archive_file("mini.zip", [server.url("dead.zip"), server.url("mirror.zip")])]
    reg = write_registry(tmp_path, {"mini": dataset(files)})
    assert cli(tmp_path, reg, "mini", "--mirror", "nowhere") == 2
    assert "no URL of mini.zip contains 'nowhere'" in capsys.readouterr().err

    do_fetch(tmp_path, reg, "mini")
    assert server.requests_for("dead.zip") == [None]  # a 404 is not retried
    assert server.requests_for("mirror.zip") == [None]

    server.log.clear()
    do_fetch(tmp_path, reg, "mini", mirror="mirror", force=True)  # --force re-extracts, the archive is reused
    assert server.log == []
    assert (tmp_path / "data/raw/mini/README.txt").is_file()


def test_an_existing_folder_not_made_by_fetch_is_not_overwritten(tmp_path, server):
    server.routes["dpdd.zip"] = Route(DPDD_ZIP)
    reg = write_registry(tmp_path, {"mini": dataset([archive_file("mini.zip", [server.url("dpdd.zip")])])})
    mine = tmp_path / "data/raw/mini"
    mine.mkdir(parents=True)
    (mine / "precious.txt").write_text("keep")
    with pytest.raises(ExistingDataError, match="has no .fetched.json"):
        do_fetch(tmp_path, reg, "mini")
    assert (mine / "precious.txt").read_text() == "keep"
    do_fetch(tmp_path, reg, "mini", force=True)
    assert not (mine / "precious.txt").exists() and (mine / "README.txt").is_file()


def test_a_changed_archive_under_a_recorded_dataset_is_named(tmp_path, server):
    server.routes["dpdd.zip"] = Route(DPDD_ZIP)
    reg = write_registry(tmp_path, {"mini": dataset([archive_file("mini.zip", [server.url("dpdd.zip")])])})
    do_fetch(tmp_path, reg, "mini")
    (tmp_path / "data/downloads/mini.zip").write_bytes(b"PK\x03\x04 tampered")
    with pytest.raises(ExistingDataError, match="is not the archive .* was extracted from"):
        do_fetch(tmp_path, reg, "mini")


WEIGHT = b"\x80\x02" + bytes(range(256)) * 20  # a legacy torch pickle starts with \x80\x02


def weight_entry(url: str, **extra) -> dict:
    return {"filename": f"net-{sha256(WEIGHT)[:8]}.pth", "urls": [url], "licence": "test", **extra}


def test_weights_are_verified_by_prefix_recorded_and_picked_up(tmp_path, server, capsys):
    server.routes["w.pth"] = Route(WEIGHT)
    reg = write_registry(tmp_path, weights={"net": weight_entry(server.url("w.pth"), sha256_prefix=sha256(WEIGHT)[:8],
                                                                size=len(WEIGHT))})
    path = do_fetch(tmp_path, reg, "net")
    assert path == tmp_path / f"data/weights/net-{sha256(WEIGHT)[:8]}.pth"
    assert path.read_bytes() == WEIGHT
    record = json.loads(path.with_name(path.name + ".sha256.json").read_text())
    assert record["sha256"] == sha256(WEIGHT) and record["check"] == "sha256 prefix + sha256 recorded on first use"

    capsys.readouterr()
    do_fetch(tmp_path, reg, "net")
    assert "already present and verified" in capsys.readouterr().out
    assert len(server.requests_for("w.pth")) == 1
    assert cli(tmp_path, reg, "--list") == 0
    assert re.search(r"^net\s+weight\s+verified\s", capsys.readouterr().out, re.M)


def test_a_weight_with_the_wrong_prefix_is_refused_and_deleted(tmp_path, server):
    server.routes["w.pth"] = Route(WEIGHT)
    prefix = "00000000" if not sha256(WEIGHT).startswith("0") else "ffffffff"
    reg = write_registry(tmp_path, weights={"net": {"filename": "net.pth", "urls": [server.url("w.pth")],
                                                    "licence": "test", "sha256_prefix": prefix}})
    with pytest.raises(ChecksumMismatch, match=f"does not start with {prefix}"):
        do_fetch(tmp_path, reg, "net")
    assert list((tmp_path / "data").rglob("net.pth*")) == []


def test_list_shows_missing_present_and_verified(tmp_path, server, capsys):
    server.routes["dpdd.zip"] = Route(DPDD_ZIP)
    reg = write_registry(tmp_path, {"a": dataset([archive_file("a.zip", [server.url("dpdd.zip")])]),
                                    "b": dataset([archive_file("b.zip", [server.url("dpdd.zip")])])},
                         {"net": weight_entry(server.url("w.pth"))})
    do_fetch(tmp_path, reg, "a")
    (tmp_path / "data/raw/b").mkdir()
    capsys.readouterr()
    assert cli(tmp_path, reg, "--list") == 0
    out = capsys.readouterr().out
    assert re.search(r"^a\s+dataset\s+verified\s", out, re.M)
    assert re.search(r"^b\s+dataset\s+present\s", out, re.M)
    assert re.search(r"^net\s+weight\s+missing\s", out, re.M)


def test_unknown_name_and_missing_name_are_errors(tmp_path, capsys):
    reg = write_registry(tmp_path, {"a": dataset([archive_file("a.zip", ["http://127.0.0.1:9/a.zip"])])})
    assert cli(tmp_path, reg, "nope") == 2
    err = capsys.readouterr().err
    assert "unknown name 'nope'" in err and "known: a" in err
    assert cli(tmp_path, reg) == 2
    assert "give a NAME or --list" in capsys.readouterr().err


def test_rar_without_bsdtar_names_the_tool_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty PATH: no bsdtar
    archive = tmp_path / "x.rar"
    archive.write_bytes(b"Rar!\x1a\x07\x00")
    with pytest.raises(ArchiveToolMissing, match="bsdtar.*libarchive-tools"):
        extract_rar(archive, tmp_path)
