"""Downloads against a local HTTP server: resume, checksums, retries, safe extraction, mirrors, manual datasets."""

import hashlib
import io
import json
import os
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import py7zr
import pytest
import yaml

from covidmtl.datasets.index import ADAPTERS
from covidmtl.download import (MARKER, DatasetSpec, DownloadOptions, FileSpec, download_dataset, load_registry, main,
                               safe_extract)
from covidmtl.errors import PipelineInputError

REPO = Path(__file__).resolve().parents[1]
FAST = DownloadOptions(retries=2, backoff_s=0.0, timeout_s=5.0, progress=False, chunk_bytes=512)


# --------------------------------------------------------------------------- a local server

class Handler(BaseHTTPRequestHandler):
    """Serves ``server.routes[path]``: data, plus misbehaviours (drop half way, fail n times, ignore Range)."""

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        route = self.server.routes.get(self.path)
        self.server.requests.append((self.path, self.headers.get("Range")))
        if route is None:
            self.send_error(404)
            return
        if route.get("fail_times", 0) > 0:
            route["fail_times"] -= 1
            self.send_error(503)
            return
        data, start = route["data"], 0
        wanted = self.headers.get("Range")
        if wanted and route.get("ranges", True):
            start = int(wanted.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if route.get("drop_after") is not None:
            # promise the whole body, send part of it, hang up
            self.wfile.write(body[: route.pop("drop_after")])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.routes, httpd.requests = {}, []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def make_tar(members: dict[str, bytes], links: dict[str, str] | None = None, mode="w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return buffer.getvalue()


DATASET_FILES = {"data/a.txt": b"alpha\n", "data/sub/b.txt": b"beta\n" * 1000}


def spec_for(url, name="ds.zip", digest=None, **file_options):
    return DatasetSpec(name="toy", title="Toy dataset", homepage="https://example.org/toy", access="open",
                       expect=["data/*.txt"], files=[FileSpec(name=name, url=url, sha256=digest, **file_options)])


def run(spec, tmp_path, mirror=None, options=FAST, **kwargs):
    return download_dataset(spec, tmp_path / "raw" / "toy", mirror, tmp_path / "datasets.lock.json", options, **kwargs)


# --------------------------------------------------------------------------- happy path, resume

def test_download_verifies_extracts_and_marks_complete(server, tmp_path):
    archive = make_zip(DATASET_FILES)
    server.routes["/ds.zip"] = {"data": archive}
    marker = run(spec_for(server.url + "/ds.zip", digest=sha(archive)), tmp_path, options=DownloadOptions(
        retries=0, backoff_s=0, progress=True, chunk_bytes=1024))
    out = tmp_path / "raw" / "toy"
    assert (out / "data" / "sub" / "b.txt").read_bytes() == DATASET_FILES["data/sub/b.txt"]
    assert (out / ".downloads" / "ds.zip").read_bytes() == archive
    assert not list((out / ".downloads").glob("*.part"))
    saved = json.loads((out / MARKER).read_text(encoding="utf-8"))
    assert saved == marker and saved["source"] == "download"
    assert saved["files"] == [{"name": "ds.zip", "source": server.url + "/ds.zip", "sha256": sha(archive),
                               "bytes": len(archive), "verified": "registry"}]


def test_resume_after_connection_dropped_half_way(server, tmp_path):
    archive = make_zip(DATASET_FILES)
    half = len(archive) // 2
    server.routes["/ds.zip"] = {"data": archive, "drop_after": half}
    run(spec_for(server.url + "/ds.zip", digest=sha(archive)), tmp_path)
    # the second request asks only for what is missing (the chunk being read when the line dropped is lost)
    assert [r[0] for r in server.requests] == ["/ds.zip", "/ds.zip"] and server.requests[0][1] is None
    resumed_at = int(server.requests[1][1].removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_at <= half
    assert (tmp_path / "raw" / "toy" / "data" / "a.txt").read_bytes() == b"alpha\n"


def test_resume_from_partial_file_of_an_earlier_run(server, tmp_path):
    archive = make_zip(DATASET_FILES)
    cache = tmp_path / "raw" / "toy" / ".downloads"
    cache.mkdir(parents=True)
    (cache / "ds.zip.part").write_bytes(archive[:100])
    server.routes["/ds.zip"] = {"data": archive}
    run(spec_for(server.url + "/ds.zip", digest=sha(archive)), tmp_path)
    assert server.requests == [("/ds.zip", "bytes=100-")]


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    archive = make_zip(DATASET_FILES)
    server.routes["/ds.zip"] = {"data": archive, "drop_after": 300, "ranges": False}
    run(spec_for(server.url + "/ds.zip", digest=sha(archive)), tmp_path)
    assert (tmp_path / "raw" / "toy" / ".downloads" / "ds.zip").read_bytes() == archive


# --------------------------------------------------------------------------- checksums

def test_wrong_checksum_names_url_and_both_checksums_and_keeps_file_aside(server, tmp_path):
    archive = make_zip(DATASET_FILES)
    server.routes["/ds.zip"] = {"data": archive}
    wrong = "0" * 64
    with pytest.raises(PipelineInputError) as err:
        run(spec_for(server.url + "/ds.zip", digest=wrong), tmp_path)
    message = str(err.value)
    assert server.url + "/ds.zip" in message and wrong in message and sha(archive) in message
    cache = tmp_path / "raw" / "toy" / ".downloads"
    assert (cache / "ds.zip.corrupt").read_bytes() == archive
    assert not (cache / "ds.zip").exists() and not (tmp_path / "raw" / "toy" / MARKER).exists()
    assert not (tmp_path / "raw" / "toy" / "data").exists()  # the corrupt file was not used


def test_unknown_checksum_recorded_on_first_download_then_enforced(server, tmp_path, caplog):
    archive = make_zip(DATASET_FILES)
    server.routes["/ds.zip"] = {"data": archive}
    marker = run(spec_for(server.url + "/ds.zip"), tmp_path)
    assert marker["files"][0]["verified"] == "recorded on first download"
    lock = json.loads((tmp_path / "datasets.lock.json").read_text(encoding="utf-8"))
    assert lock["toy"]["ds.zip"]["sha256"] == sha(archive)
    assert "Commit that file" in caplog.text
    # upstream changes the file: the next download is checked against the lock file
    server.routes["/ds.zip"] = {"data": make_zip({"data/a.txt": b"tampered\n"})}
    (tmp_path / "raw" / "toy" / ".downloads" / "ds.zip").unlink()
    with pytest.raises(PipelineInputError, match=r"checksum mismatch .* \(lock file "):
        run(spec_for(server.url + "/ds.zip"), tmp_path)


def test_require_checksums_refuses_unverifiable_file(server, tmp_path):
    server.routes["/ds.zip"] = {"data": make_zip(DATASET_FILES)}
    options = DownloadOptions(retries=0, backoff_s=0, progress=False, require_checksums=True)
    with pytest.raises(PipelineInputError, match="no sha256 is known for ds.zip"):
        run(spec_for(server.url + "/ds.zip"), tmp_path, options=options)
    assert not (tmp_path / "datasets.lock.json").exists()


def test_verify_false_skips_the_check(server, tmp_path):
    server.routes["/ds.zip"] = {"data": make_zip(DATASET_FILES)}
    marker = run(spec_for(server.url + "/ds.zip", digest="0" * 64, verify=False), tmp_path)
    assert marker["files"][0]["verified"].startswith("not verified")


# --------------------------------------------------------------------------- retries

def test_retries_are_bounded(server, tmp_path):
    server.routes["/ds.zip"] = {"data": b"x", "fail_times": 100}
    with pytest.raises(PipelineInputError, match=r"failed after 3 attempt\(s\): HTTP 503"):
        run(spec_for(server.url + "/ds.zip"), tmp_path)
    assert len(server.requests) == 3


def test_transient_errors_then_success(server, tmp_path):
    archive = make_zip(DATASET_FILES)
    server.routes["/ds.zip"] = {"data": archive, "fail_times": 2}
    run(spec_for(server.url + "/ds.zip", digest=sha(archive)), tmp_path)
    assert len(server.requests) == 3


def test_client_error_is_not_retried(server, tmp_path):
    with pytest.raises(PipelineInputError, match=r"HTTP 404 .* for http://127.0.0.1"):
        run(spec_for(server.url + "/missing.zip"), tmp_path)
    assert len(server.requests) == 1


def test_unreachable_host_fails_after_retries(tmp_path):
    spec = spec_for("http://127.0.0.1:9/ds.zip")  # discard port: connection refused
    with pytest.raises(PipelineInputError, match=r"failed after 3 attempt\(s\): connection failed"):
        run(spec, tmp_path)


# --------------------------------------------------------------------------- archives

def test_zip_member_escaping_the_folder_is_rejected(tmp_path):
    archive = tmp_path / "evil.zip"
    archive.write_bytes(make_zip({"ok.txt": b"fine", "../evil.txt": b"pwned"}))
    with pytest.raises(PipelineInputError, match=r"'../evil.txt' would be written outside"):
        safe_extract(archive, tmp_path / "target")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "target" / "ok.txt").exists()


def test_zip_absolute_member_is_rejected(tmp_path):
    archive = tmp_path / "evil.zip"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr(zipfile.ZipInfo("/tmp/evil.txt"), b"pwned")
    archive.write_bytes(buffer.getvalue())
    with pytest.raises(PipelineInputError, match="absolute path"):
        safe_extract(archive, tmp_path / "target")


def test_zip_symlink_escaping_is_rejected(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        info = zipfile.ZipInfo("data/link")
        info.external_attr = (0o120777 << 16)  # a symbolic link entry, as `zip --symlinks` writes it
        zf.writestr(info, "../../outside")
    archive = tmp_path / "evil.zip"
    archive.write_bytes(buffer.getvalue())
    with pytest.raises(PipelineInputError, match=r"is a link to '../../outside'"):
        safe_extract(archive, tmp_path / "target")
    assert not (tmp_path / "target" / "data" / "link").exists()


def test_tar_member_escaping_the_folder_is_rejected(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(make_tar({"ok.txt": b"fine", "../evil.txt": b"pwned"}))
    with pytest.raises(PipelineInputError, match=r"'../evil.txt' rejected"):
        safe_extract(archive, tmp_path / "target")
    assert not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize("target", ["/etc/passwd", "../../outside"])
def test_tar_symlink_escaping_is_rejected(tmp_path, target):
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(make_tar({"data/a.txt": b"a"}, links={"data/link": target}))
    with pytest.raises(PipelineInputError, match=r"'data/link' rejected"):
        safe_extract(archive, tmp_path / "target")
    assert not (tmp_path / "target" / "data").exists()


def test_tar_and_7z_extract(tmp_path):
    tar = tmp_path / "ds.tar.gz"
    tar.write_bytes(make_tar(DATASET_FILES, links={"data/alias.txt": "a.txt"}))
    assert safe_extract(tar, tmp_path / "t") == 3
    assert (tmp_path / "t" / "data" / "alias.txt").read_bytes() == b"alpha\n"  # a link inside the folder is fine
    seven = tmp_path / "ds.7z"
    with py7zr.SevenZipFile(seven, "w") as sz:
        for name, data in DATASET_FILES.items():
            sz.writestr(data, name)
    assert safe_extract(seven, tmp_path / "s") == 2
    assert (tmp_path / "s" / "data" / "sub" / "b.txt").read_bytes() == DATASET_FILES["data/sub/b.txt"]


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz", ".7z"])
def test_truncated_archive_gives_a_clear_error(tmp_path, suffix):
    full = tmp_path / f"full{suffix}"
    if suffix == ".zip":
        full.write_bytes(make_zip(DATASET_FILES))
    elif suffix == ".tar.gz":
        full.write_bytes(make_tar({"big.bin": os.urandom(200_000)}))
    else:
        with py7zr.SevenZipFile(full, "w") as sz:
            sz.writestr(os.urandom(200_000), "big.bin")
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(PipelineInputError, match=rf"archive cut{suffix} is truncated or corrupt") as err:
        safe_extract(cut, tmp_path / "target")
    assert "delete it and rerun" in str(err.value)


def test_nested_archives_are_extracted_into_their_own_folder(server, tmp_path):
    inner = make_zip({"img1.png": b"1", "img2.png": b"2"})
    outer = make_zip({"repo/Images/CT_A.zip": inner, "data/a.txt": b"a"})
    server.routes["/outer.zip"] = {"data": outer}
    run(spec_for(server.url + "/outer.zip", name="outer.zip", nested=["repo/Images/*.zip"]), tmp_path)
    assert (tmp_path / "raw" / "toy" / "repo" / "Images" / "CT_A" / "img2.png").read_bytes() == b"2"


def test_incomplete_layout_is_an_error(server, tmp_path):
    server.routes["/ds.zip"] = {"data": make_zip({"other/x.txt": b"x"})}
    with pytest.raises(PipelineInputError, match=r"expected layout is incomplete: nothing matches \['data/\*.txt'\]"):
        run(spec_for(server.url + "/ds.zip"), tmp_path)
    assert not (tmp_path / "raw" / "toy" / MARKER).exists()


# --------------------------------------------------------------------------- mirrors

def test_mirror_with_archives_replaces_the_network(tmp_path):
    archive = make_zip(DATASET_FILES)
    (tmp_path / "mirror" / "toy").mkdir(parents=True)
    (tmp_path / "mirror" / "toy" / "ds.zip").write_bytes(archive)
    spec = spec_for("http://127.0.0.1:9/ds.zip", digest=sha(archive))  # unreachable: must not be used
    marker = run(spec, tmp_path, mirror=f"file://{tmp_path / 'mirror'}")
    assert marker["source"] == "mirror archives" and marker["files"][0]["verified"] == "registry"
    assert (tmp_path / "raw" / "toy" / "data" / "a.txt").exists()


def test_mirror_archive_with_wrong_checksum_is_rejected(tmp_path):
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "ds.zip").write_bytes(make_zip(DATASET_FILES))
    with pytest.raises(PipelineInputError, match="checksum mismatch for .*mirror/ds.zip"):
        run(spec_for("http://127.0.0.1:9/ds.zip", digest="1" * 64), tmp_path, mirror=tmp_path / "mirror")


@pytest.mark.parametrize("link_mode", ["symlink", "copy"])
def test_mirror_with_extracted_folder(tmp_path, link_mode):
    source = tmp_path / "mirror" / "toy"
    for name, data in DATASET_FILES.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
    options = DownloadOptions(progress=False, link_mode=link_mode)
    marker = run(spec_for("http://127.0.0.1:9/ds.zip"), tmp_path, mirror=tmp_path / "mirror", options=options)
    out = tmp_path / "raw" / "toy"
    assert marker["source"] == f"mirror folder ({link_mode})" and marker["tree"]["files"] == 2
    assert (out / "data" / "sub" / "b.txt").read_bytes() == DATASET_FILES["data/sub/b.txt"]
    assert (out / "data").is_symlink() == (link_mode == "symlink")
    assert (out / MARKER).is_file() and not (source / MARKER).exists()


def test_mirror_without_the_dataset_says_where_it_looked(tmp_path):
    (tmp_path / "mirror").mkdir()
    with pytest.raises(PipelineInputError, match=r"dataset toy is not in the mirror") as err:
        run(spec_for("http://127.0.0.1:9/ds.zip"), tmp_path, mirror=tmp_path / "mirror")
    assert str(tmp_path / "mirror" / "toy") in str(err.value)


# --------------------------------------------------------------------------- manual datasets

def manual_spec():
    return DatasetSpec(name="restricted", title="Restricted CT", homepage="https://example.org/register",
                       access="manual", instructions="Register first.", expect=["studies/*.nii.gz"])


def test_manual_dataset_says_where_to_put_the_files(tmp_path):
    out = tmp_path / "raw" / "restricted"
    with pytest.raises(PipelineInputError) as err:
        download_dataset(manual_spec(), out, None, tmp_path / "lock.json", FAST)
    message = str(err.value)
    assert "needs a registration or licence click-through" in message
    assert "https://example.org/register" in message and str(out) in message and "studies/*.nii.gz" in message


def test_manual_dataset_placed_by_hand_is_accepted(tmp_path):
    out = tmp_path / "raw" / "restricted"
    (out / "studies").mkdir(parents=True)
    (out / "studies" / "s1.nii.gz").write_bytes(b"x")
    marker = download_dataset(manual_spec(), out, None, tmp_path / "lock.json", FAST)
    assert marker["source"] == "placed by hand" and (out / MARKER).is_file()


def test_manual_dataset_from_mirror_folder(tmp_path):
    (tmp_path / "mirror" / "restricted" / "studies").mkdir(parents=True)
    (tmp_path / "mirror" / "restricted" / "studies" / "s1.nii.gz").write_bytes(b"x")
    marker = download_dataset(manual_spec(), tmp_path / "raw", tmp_path / "mirror", tmp_path / "lock.json", FAST)
    assert marker["source"] == "mirror folder (symlink)"


# --------------------------------------------------------------------------- registry and CLI

def test_project_registry_loads_and_every_dataset_has_an_adapter():
    registry = load_registry(REPO / "config" / "datasets.yaml")
    assert set(registry) <= set(ADAPTERS)
    assert {"covid_ct_md", "mosmed", "covid19_ct_seg", "medseg", "ucsd_covid_ct", "ictcf", "cc_ccii"} == set(registry)
    for name in ("mosmed", "ictcf", "cc_ccii"):
        assert registry[name].access == "manual"
    assert all(f.url.startswith("https://") for spec in registry.values() for f in spec.files)


def test_registry_with_unknown_key_is_rejected(tmp_path):
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump({"datasets": {"toy": {"urls": ["x"]}}}))
    with pytest.raises(PipelineInputError, match=r"dataset 'toy' has unknown key\(s\) \['urls'\]"):
        load_registry(path)


def test_cli_downloads_and_writes_marker(server, tmp_path):
    archive = make_zip(DATASET_FILES)
    server.routes["/ds.zip"] = {"data": archive}
    registry = tmp_path / "datasets.yaml"
    registry.write_text(yaml.safe_dump({"datasets": {"toy": {
        "access": "open", "expect": ["data/*.txt"],
        "files": [{"name": "ds.zip", "url": server.url + "/ds.zip", "sha256": None}]}}}))
    out = tmp_path / "raw" / "toy"
    assert main(["--dataset", "toy", "--registry", str(registry), "--out-dir", str(out), "--no-progress",
                 "--params", json.dumps({"retries": 1, "backoff_s": 0})]) == 0
    assert (out / MARKER).is_file()
    assert (tmp_path / "datasets.lock.json").is_file()  # beside the registry by default
    with pytest.raises(PipelineInputError, match="dataset 'nope' is not in the registry"):
        main(["--dataset", "nope", "--registry", str(registry), "--out-dir", str(out)])


@pytest.mark.realdata
def test_real_covid_ct_md_from_the_shared_mirror(real_ct_dir, tmp_path):
    registry = load_registry(REPO / "config" / "datasets.yaml")
    out = tmp_path / "raw" / "covid_ct_md"
    marker = download_dataset(registry["covid_ct_md"], out, real_ct_dir.parent, tmp_path / "lock.json", FAST)
    assert marker["tree"]["files"] >= 470 and (out / "Index.csv").exists()
    assert (out / "COVID-19 subjects" / "P001").is_dir()
