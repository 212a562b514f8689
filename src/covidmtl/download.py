"""``covidmtl download``: put one public dataset, extracted in its own layout, under ``resources/raw/<name>/``.

What a run does, per file listed for the dataset in the registry (``config/datasets.yaml``):

1. take it from the mirror (a local folder or ``file://`` URL that replaces the network) or
   stream it over HTTP into ``<name>.part``, resuming a partial file with an HTTP Range
   request and retrying dropped connections / 5xx answers with exponential backoff;
2. verify its sha256 (see *Checksums*); a mismatch moves the file aside as ``<name>.corrupt``
   and the error names the URL and both checksums;
3. rename it atomically into the download cache and extract it safely (zip, tar.*, 7z): no
   member may land outside the target folder, no link may point out of it.

A mirror may instead hold the dataset already extracted in its real layout (for example
``../shared/real-ct/covid-ct-md``): its top-level entries are linked (or copied) into the
output folder. Datasets that need a registration or a licence click-through are never
fetched: the error says where to put the files by hand. The run ends by writing
``<out-dir>/.complete`` (JSON: source, files, checksums), the file the ``dataset_index``
checkpoint depends on.

Checksums: a sha256 in the registry is authoritative. Where the registry has none (most
publishers give none, or only md5), the first download records the file's sha256 in a lock
file beside the registry (``config/datasets.lock.json``), logs a warning, and every later
download is verified against it: commit the lock file. ``--require-checksums`` refuses
unverifiable files instead; ``verify: false`` on a file skips the check (for archives that
upstream regenerates, e.g. a GitHub branch archive).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import logging
import lzma
import os
import re
import shutil
import stat
import sys
import tarfile
import time
import zipfile
import zlib
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import unquote, urlparse

import requests
import yaml

from covidmtl.errors import PipelineInputError

log = logging.getLogger(__name__)

STAGE = "download"
MARKER = ".complete"
ACCESS_KINDS = ("open", "manual")
ARCHIVE_KINDS = {
    ".zip": "zip", ".7z": "7z", ".tar": "tar", ".tar.gz": "tar", ".tgz": "tar",
    ".tar.bz2": "tar", ".tbz2": "tar", ".tar.xz": "tar", ".txz": "tar",
}
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


# --------------------------------------------------------------------------- registry

@dataclass
class FileSpec:
    """One downloadable file of a dataset."""

    name: str                      # file name in the cache and in a mirror
    url: str | None = None         # None: obtainable by hand (or from a mirror) only
    sha256: str | None = None      # None: verified against the lock file (recorded on first download)
    verify: bool = True            # False: never verified (upstream regenerates the file)
    extract_to: str = "."          # folder under out-dir for an archive's content (or for a plain file)
    nested: list[str] = field(default_factory=list)  # globs of archives inside, extracted in place afterwards
    size: int | None = None        # bytes, informational


@dataclass
class DatasetSpec:
    name: str
    title: str = ""
    homepage: str = ""
    licence: str = ""
    citation: str = ""
    access: str = "open"           # open | manual (registration / licence click-through)
    instructions: str = ""         # what to do by hand (manual datasets)
    mirror_name: str = ""          # folder name of the extracted dataset in a mirror (default: name)
    expect: list = field(default_factory=list)  # globs (or lists of alternative globs) a complete copy matches
    files: list[FileSpec] = field(default_factory=list)


def _registry_error(path: Path, reason: str) -> PipelineInputError:
    return PipelineInputError(STAGE, f"dataset registry: {reason}", None, path,
                              "fix the registry file (format: see docs/datasets.md)")


def load_registry(path: str | Path) -> dict[str, DatasetSpec]:
    path = Path(path)
    if not path.is_file():
        raise PipelineInputError(STAGE, "dataset registry not found", None, path,
                                 "pass --registry config/datasets.yaml (run from the repository root)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise _registry_error(path, f"not valid YAML ({err})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("datasets"), dict):
        raise _registry_error(path, "top-level key `datasets:` (a mapping of dataset name to entry) is missing")
    known_dataset = {f.name for f in fields(DatasetSpec)} - {"name", "files"}
    known_file = {f.name for f in fields(FileSpec)}
    registry = {}
    for name, entry in raw["datasets"].items():
        entry = dict(entry or {})
        unknown = set(entry) - known_dataset - {"files"}
        if unknown:
            raise _registry_error(path, f"dataset {name!r} has unknown key(s) {sorted(unknown)}")
        files = []
        for item in entry.pop("files", None) or []:
            extra = set(item) - known_file
            if extra or "name" not in item:
                raise _registry_error(path, f"dataset {name!r}: file entry {item!r} needs `name` and only "
                                            f"the keys {sorted(known_file)}")
            if "/" in item["name"] or item["name"] in {".", ".."}:
                raise _registry_error(path, f"dataset {name!r}: file name {item['name']!r} must be a plain name")
            if item.get("sha256") and not re.fullmatch(r"[0-9a-fA-F]{64}", str(item["sha256"])):
                raise _registry_error(path, f"dataset {name!r}: sha256 of {item['name']!r} is not 64 hex digits")
            files.append(FileSpec(**{**item, "nested": list(item.get("nested") or [])}))
        spec = DatasetSpec(name=name, files=files, **{k: v for k, v in entry.items() if v is not None})
        if spec.access not in ACCESS_KINDS:
            raise _registry_error(path, f"dataset {name!r}: access must be one of {ACCESS_KINDS}, not {spec.access!r}")
        spec.mirror_name = spec.mirror_name or name
        registry[name] = spec
    return registry


# --------------------------------------------------------------------------- options

@dataclass
class DownloadOptions:
    """Network and verification knobs (config section `download`)."""

    retries: int = 5               # further attempts after the first, per file
    backoff_s: float = 2.0         # first wait; doubles each retry
    backoff_max_s: float = 60.0
    timeout_s: float = 60.0        # connect/read timeout of one request
    chunk_bytes: int = 1 << 16     # a dropped connection loses at most the chunk being read
    require_checksums: bool = False
    link_mode: str = "symlink"     # how an extracted mirror folder enters out-dir: symlink | copy
    progress: bool = True

    @classmethod
    def from_params(cls, params: dict | None) -> "DownloadOptions":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (params or {}).items() if k in known})


# --------------------------------------------------------------------------- checksums and lock file

def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


class LockFile:
    """sha256 of files downloaded without a registry checksum (trust on first use, then verified)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def _read(self) -> dict:
        if not self.path.exists():
            return {}
        try:
            return json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except json.JSONDecodeError as err:
            raise PipelineInputError(STAGE, f"the checksum lock file is not valid JSON ({err})", None, self.path,
                                     "restore it from version control or delete it to record checksums anew") from None

    def get(self, dataset: str, name: str) -> dict | None:
        return self._read().get(dataset, {}).get(name)

    def record(self, dataset: str, name: str, entry: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # several datasets may download at once (Snakemake jobs): serialise the read-modify-write
        with open(self.path.with_name(self.path.name + ".flock"), "w") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            data = self._read()
            data.setdefault(dataset, {})[name] = entry
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
            os.replace(tmp, self.path)


def verify_checksum(path: Path, spec: FileSpec, dataset: str, source: str, lock: LockFile,
                    options: DownloadOptions) -> tuple[str, str]:
    """Check ``path`` against the registry or lock file; returns (sha256, how it was verified).

    A mismatch moves the file aside as ``<name>.corrupt`` (never used) and raises.
    """
    actual = sha256_file(path, options.chunk_bytes)
    if not spec.verify:
        return actual, "not verified (verify: false in the registry)"
    expected, origin = (spec.sha256 or "").lower(), "registry"
    if not expected:
        locked = lock.get(dataset, spec.name)
        expected, origin = ((locked or {}).get("sha256") or "").lower(), f"lock file {lock.path}"
    if expected:
        if actual != expected:
            corrupt = path.with_name(spec.name + ".corrupt")
            os.replace(path, corrupt)
            raise PipelineInputError(
                STAGE, f"checksum mismatch for {source}: expected sha256 {expected} ({origin}), got {actual}; "
                f"the file was kept aside as {corrupt.name} and not used", dataset, corrupt,
                "retry (a proxy or an interrupted transfer can corrupt a file); if upstream really changed the "
                "file, check it and update the checksum in the registry/lock file")
        return actual, origin
    if options.require_checksums:
        raise PipelineInputError(
            STAGE, f"no sha256 is known for {spec.name} ({source}) and checksums are required", dataset, path,
            "add `sha256:` to the registry, or run once without --require-checksums to record it in the lock file")
    lock.record(dataset, spec.name, {"sha256": actual, "url": source, "bytes": path.stat().st_size,
                                     "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    log.warning("%s: no checksum known for %s; recorded sha256 %s in %s on this first download. Commit that file "
                "so that every later download is verified against it.", dataset, spec.name, actual, lock.path)
    return actual, "recorded on first download"


# --------------------------------------------------------------------------- transfer

class _Retryable(Exception):
    """A transfer problem worth another attempt (dropped connection, 5xx, short body)."""


def _local_path(url: str) -> Path | None:
    if url.startswith("file://"):
        return Path(unquote(urlparse(url).path))
    if "://" not in url:
        return Path(url)
    return None


def _progress(total: int | None, initial: int, name: str, enabled: bool):
    from tqdm import tqdm

    # in a log file (no TTY) a bar redrawn every 10 s is readable; on a terminal redraw often
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
                disable=not enabled, mininterval=0.5 if sys.stderr.isatty() else 10.0, leave=False)


def _fetch_once(session: requests.Session, url: str, part: Path, options: DownloadOptions, dataset: str) -> None:
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        response = session.get(url, headers=headers, stream=True, timeout=options.timeout_s, allow_redirects=True)
    except (requests.ConnectionError, requests.Timeout) as err:
        raise _Retryable(f"connection failed ({type(err).__name__})") from err
    with response:
        if response.status_code == 416 and have:
            total = response.headers.get("Content-Range", "").rpartition("/")[2]
            if total.isdigit() and int(total) == have:
                return  # the partial file was already complete
            part.unlink()
            raise _Retryable("the server refused to resume the partial file; starting over")
        if response.status_code in RETRY_STATUS:
            raise _Retryable(f"HTTP {response.status_code}")
        if response.status_code >= 400:
            raise PipelineInputError(
                STAGE, f"HTTP {response.status_code} {response.reason} for {url}", dataset, part,
                "check the URL in the registry; if the dataset needs a login or licence click-through, download it "
                "by hand (see docs/datasets.md) or use a mirror (--mirror)")
        if have and response.status_code == 206:
            start = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
            if not start or int(start.group(1)) != have:
                part.unlink()
                raise _Retryable("the server answered the resume request with another range; starting over")
            mode = "ab"
            log.info("%s: resuming %s at %d bytes", dataset, part.name[:-5], have)
        else:
            have, mode = 0, "wb"  # no partial file, or the server ignored the Range header
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        try:
            with open(part, mode) as stream, _progress(total, have, part.name[:-5], options.progress) as bar:
                for chunk in response.iter_content(options.chunk_bytes):
                    stream.write(chunk)
                    bar.update(len(chunk))
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as err:
            raise _Retryable(f"connection dropped after {part.stat().st_size} bytes ({type(err).__name__})") from err
        if total is not None and part.stat().st_size < total:
            raise _Retryable(f"connection dropped after {part.stat().st_size} of {total} bytes")


def fetch(url: str, part: Path, options: DownloadOptions, dataset: str, session: requests.Session | None = None) -> Path:
    """Download ``url`` into ``part`` (resuming what is there); bounded retries with exponential backoff."""
    part.parent.mkdir(parents=True, exist_ok=True)
    local = _local_path(url)
    if local is not None:
        if not local.is_file():
            raise PipelineInputError(STAGE, f"local source {url} does not exist", dataset, local,
                                     "fix the path in the registry or the mirror")
        shutil.copyfile(local, part)
        return part
    session = session or requests.Session()
    for attempt in range(options.retries + 1):
        try:
            _fetch_once(session, url, part, options, dataset)
            return part
        except _Retryable as err:
            if attempt == options.retries:
                raise PipelineInputError(
                    STAGE, f"download of {url} failed after {attempt + 1} attempt(s): {err}", dataset, part,
                    "check the network (or proxy) and rerun: the partial file is kept and the download resumes; "
                    "offline, point `mirror:` at a folder holding the files") from None
            delay = min(options.backoff_max_s, options.backoff_s * 2**attempt)
            log.warning("%s: %s: %s; retry %d/%d in %.1f s", dataset, url, err, attempt + 1, options.retries, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- safe extraction

def archive_kind(name: str) -> str | None:
    lower = name.lower()
    for suffix in sorted(ARCHIVE_KINDS, key=len, reverse=True):
        if lower.endswith(suffix):
            return ARCHIVE_KINDS[suffix]
    return None


def archive_stem(name: str) -> str:
    kind_suffix = max((sfx for sfx in ARCHIVE_KINDS if name.lower().endswith(sfx)), key=len, default="")
    return name[: len(name) - len(kind_suffix)] if kind_suffix else name


def _inside(root: Path, member: str, archive: Path, link: str | None = None) -> Path:
    """Where ``member`` lands under ``root`` (resolved); raises when it (or its link target) escapes."""
    if member.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", member):
        raise PipelineInputError(STAGE, f"archive member {member!r} has an absolute path (rejected)", None, archive,
                                 "the archive is unsafe or corrupt; obtain it again from the official source")
    target = (root / member).resolve()
    if not target.is_relative_to(root):
        raise PipelineInputError(STAGE, f"archive member {member!r} would be written outside {root} (rejected)",
                                 None, archive, "the archive is unsafe or corrupt; obtain it again from the official source")
    if link is not None:
        pointed = (target.parent / link).resolve()
        if os.path.isabs(link) or not pointed.is_relative_to(root):
            raise PipelineInputError(STAGE, f"archive member {member!r} is a link to {link!r}, outside {root} (rejected)",
                                     None, archive, "the archive is unsafe or corrupt; obtain it again from the official source")
    return target


def _extract_zip(archive: Path, root: Path) -> int:
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        links = {}
        for info in members:  # check every member before writing anything
            is_link = stat.S_ISLNK(info.external_attr >> 16)
            links[info.filename] = zf.read(info).decode() if is_link else None
            _inside(root, info.filename, archive, links[info.filename])
        for info in members:
            if links[info.filename] is not None:
                target = _inside(root, info.filename, archive, links[info.filename])
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.is_symlink() or target.exists():
                    target.unlink()
                os.symlink(links[info.filename], target)
            else:
                zf.extract(info, root)
        return len(members)


def _extract_tar(archive: Path, root: Path) -> int:
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        for member in members:  # the stdlib 'data' filter: no absolute paths, no escapes, no links out, no devices
            try:
                tarfile.data_filter(member, str(root))
            except tarfile.FilterError as err:
                raise PipelineInputError(STAGE, f"archive member {member.name!r} rejected: {err}", None, archive,
                                         "the archive is unsafe or corrupt; obtain it again from the official source") from None
        tf.extractall(root, members=members, filter="data")
        return len(members)


def _extract_7z(archive: Path, root: Path) -> int:
    import py7zr

    with py7zr.SevenZipFile(archive) as sz:
        infos = sz.list()
        for info in infos:
            if info.is_symlink:  # py7zr cannot show a link's target before extracting it; datasets have none
                raise PipelineInputError(STAGE, f"archive member {info.filename!r} is a symbolic link (rejected in 7z archives)",
                                         None, archive, "obtain the archive again from the official source")
            _inside(root, info.filename, archive)
    with py7zr.SevenZipFile(archive) as sz:
        sz.extractall(path=root)
    return len(infos)


def safe_extract(archive: Path, target: Path) -> int:
    """Extract ``archive`` into ``target``; returns the number of members. Unsafe or broken archives raise."""
    import py7zr

    kind = archive_kind(archive.name)
    if kind is None:
        raise PipelineInputError(STAGE, f"{archive.name} is not a known archive type", None, archive,
                                 f"supported: {sorted(ARCHIVE_KINDS)}")
    target.mkdir(parents=True, exist_ok=True)
    root = target.resolve()
    extractor = {"zip": _extract_zip, "tar": _extract_tar, "7z": _extract_7z}[kind]
    try:
        return extractor(archive, root)
    except (zipfile.BadZipFile, tarfile.ReadError, tarfile.CompressionError, EOFError, zlib.error, lzma.LZMAError,
            py7zr.exceptions.ArchiveError, py7zr.exceptions.Bad7zFile, py7zr.exceptions.CrcError,
            py7zr.exceptions.DecompressionError) as err:
        raise PipelineInputError(STAGE, f"archive {archive.name} is truncated or corrupt ({type(err).__name__}: {err})",
                                 None, archive, "delete it and rerun to download it again (or replace it in the mirror)") from None


# --------------------------------------------------------------------------- mirror

def resolve_mirror(mirror: str | Path | None) -> Path | None:
    if mirror in (None, ""):
        return None
    text = str(mirror)
    if text.startswith("file://"):
        return Path(unquote(urlparse(text).path))
    if "://" in text:
        raise PipelineInputError(STAGE, f"mirror {text!r} must be a local folder or a file:// URL", None, None,
                                 "copy the files to a local folder and point `mirror:` at it")
    return Path(text)


def _layout_missing(folder: Path, expect: list) -> list:
    """The `expect` items nothing under ``folder`` matches; an item is a glob or a list of alternative globs.

    (No '**': pathlib does not follow the symlinks a mirror folder is linked in with.)
    """
    def matches(pattern: str) -> bool:
        return next(iter(folder.glob(pattern)), None) is not None

    return [item for item in expect if not any(matches(p) for p in ([item] if isinstance(item, str) else item))]


def find_in_mirror(mirror: Path, spec: DatasetSpec) -> tuple[str, dict[str, Path] | Path]:
    """('archives', {file name: path}) or ('folder', extracted dataset folder); raises when absent."""
    folders = list(dict.fromkeys([mirror / spec.mirror_name, mirror / spec.name]))
    found = {}
    for f in spec.files:
        for candidate in [folder / f.name for folder in folders] + [mirror / f.name]:
            if candidate.is_file():
                found[f.name] = candidate
                break
    if spec.files and len(found) == len(spec.files):
        return "archives", found
    for folder in folders:
        if folder.is_dir() and not _layout_missing(folder, spec.expect):
            return "folder", folder
    looked = [str(folder) for folder in folders]
    raise PipelineInputError(
        STAGE, f"dataset {spec.name} is not in the mirror: no extracted copy in {looked} matching {spec.expect}"
        + (f" and archives missing: {sorted(set(f.name for f in spec.files) - set(found))}" if spec.files else ""),
        spec.name, mirror,
        f"put the extracted dataset at {folders[0]} (real layout) or its archives in {mirror}, or unset `mirror`")


def _link_tree(source: Path, out_dir: Path, mode: str) -> tuple[int, int]:
    """Link (or copy) the top-level entries of an extracted mirror folder into ``out_dir``; returns (files, bytes)."""
    n_files = n_bytes = 0
    for entry in sorted(source.iterdir()):
        if entry.name in {MARKER, ".downloads"}:
            continue
        target = out_dir / entry.name
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
        if mode == "copy":
            (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, target)
        else:
            os.symlink(entry.resolve(), target)
    for path in source.rglob("*"):
        if path.is_file():
            n_files += 1
            n_bytes += path.stat().st_size
    return n_files, n_bytes


# --------------------------------------------------------------------------- one dataset

def _manual_error(spec: DatasetSpec, out_dir: Path, cache_dir: Path, reason: str) -> PipelineInputError:
    layout = ", ".join(item if isinstance(item, str) else " or ".join(item) for item in spec.expect)
    where = f"extract it so that {out_dir} holds the dataset's own layout ({layout or 'see docs/datasets.md'})"
    if spec.files:
        where += f", or put the archive(s) {[f.name for f in spec.files]} in {cache_dir}"
    return PipelineInputError(
        STAGE, f"{spec.title or spec.name} {reason}. {spec.instructions}".strip().rstrip("."), spec.name, out_dir,
        f"download it by hand from {spec.homepage} (accepting its licence) and {where}; then rerun. "
        "Or set `mirror:` to a folder holding it")


def _write_marker(out_dir: Path, marker: dict) -> Path:
    path = out_dir / MARKER
    tmp = out_dir / (MARKER + ".tmp")
    tmp.write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _place_file(spec: FileSpec, final: Path, out_dir: Path) -> None:
    target_dir = out_dir / spec.extract_to
    if archive_kind(spec.name):
        n = safe_extract(final, target_dir)
        log.info("extracted %s (%d members) into %s", spec.name, n, target_dir)
        for pattern in spec.nested:
            for inner in sorted(target_dir.glob(pattern)):
                # into a folder named after the inner archive, so archives without a top folder stay apart
                n = safe_extract(inner, inner.parent / archive_stem(inner.name))
                log.info("extracted nested %s (%d members)", inner.relative_to(out_dir), n)
    else:
        target_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(final, target_dir / spec.name)


def download_dataset(spec: DatasetSpec, out_dir: Path, mirror: str | Path | None = None, lock_path: Path | None = None,
                     options: DownloadOptions | None = None, cache_dir: Path | None = None,
                     session: requests.Session | None = None) -> dict:
    """Leave ``spec`` extracted under ``out_dir`` and write the completion marker; returns the marker."""
    options = options or DownloadOptions()
    out_dir = Path(out_dir)
    cache_dir = Path(cache_dir) if cache_dir else out_dir / ".downloads"
    lock = LockFile(lock_path or Path("config/datasets.lock.json"))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER).unlink(missing_ok=True)  # a failed rerun must not leave an old marker behind
    marker = {"dataset": spec.name, "title": spec.title, "homepage": spec.homepage, "licence": spec.licence,
              "files": [], "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}

    mirror_path = resolve_mirror(mirror)
    mirrored: dict[str, Path] = {}
    if mirror_path is not None:
        kind, found = find_in_mirror(mirror_path, spec)
        if kind == "folder":
            n_files, n_bytes = _link_tree(found, out_dir, options.link_mode)
            log.info("%s: using the extracted copy in the mirror %s (%d files, %.1f MB, %s)", spec.name, found,
                     n_files, n_bytes / 1e6, options.link_mode)
            marker.update(source=f"mirror folder ({options.link_mode})", mirror=str(found.resolve()),
                          tree={"files": n_files, "bytes": n_bytes})
            return _finish(spec, out_dir, marker)
        mirrored = found

    if not spec.files or any(f.url is None and f.name not in mirrored and not (cache_dir / f.name).is_file()
                             for f in spec.files):
        if spec.expect and not _layout_missing(out_dir, spec.expect):
            log.info("%s: found the dataset placed by hand in %s", spec.name, out_dir)
            marker.update(source="placed by hand")
            return _finish(spec, out_dir, marker)
        if spec.access == "manual":
            raise _manual_error(spec, out_dir, cache_dir, "needs a registration or licence click-through and "
                                "cannot be downloaded automatically")
        raise _manual_error(spec, out_dir, cache_dir, "has no download URL in the registry")

    cache_dir.mkdir(parents=True, exist_ok=True)
    for f in spec.files:
        final = cache_dir / f.name
        source = str(mirrored.get(f.name) or (final if f.url is None else f.url))
        if final.is_file():
            sha, how = verify_checksum(final, f, spec.name, source, lock, options)
            log.info("%s: %s already downloaded (sha256 %s, %s)", spec.name, f.name, sha[:12], how)
        else:
            part = cache_dir / (f.name + ".part")
            log.info("%s: fetching %s from %s", spec.name, f.name, source)
            fetch(source, part, options, spec.name, session)
            sha, how = verify_checksum(part, f, spec.name, source, lock, options)
            os.replace(part, final)
        _place_file(f, final, out_dir)
        marker["files"].append({"name": f.name, "source": source, "sha256": sha, "bytes": final.stat().st_size,
                                "verified": how})
    marker["source"] = "mirror archives" if mirrored else "download"
    return _finish(spec, out_dir, marker)


def _finish(spec: DatasetSpec, out_dir: Path, marker: dict) -> dict:
    missing = _layout_missing(out_dir, spec.expect)
    if missing:
        raise PipelineInputError(
            STAGE, f"{spec.name}: the data is in place but the expected layout is incomplete: nothing matches {missing}",
            spec.name, out_dir, "check that every archive of the dataset was obtained and extracted (see docs/datasets.md)")
    _write_marker(out_dir, marker)
    log.info("%s: complete (%s); marker %s", spec.name, marker.get("source"), out_dir / MARKER)
    return marker


# --------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="covidmtl download",
                                     description="Download (or take from a mirror), verify and extract one dataset.")
    parser.add_argument("--dataset", required=True, help="dataset name in the registry")
    parser.add_argument("--registry", default="config/datasets.yaml", type=Path)
    parser.add_argument("--out-dir", required=True, type=Path, help="e.g. resources/raw/<dataset>")
    parser.add_argument("--mirror", default=None, help="local folder or file:// URL replacing the network")
    parser.add_argument("--lock", default=None, type=Path,
                        help="checksum lock file (default: <registry stem>.lock.json beside the registry)")
    parser.add_argument("--cache-dir", default=None, type=Path, help="where archives are kept (default: <out-dir>/.downloads)")
    parser.add_argument("--params", default=None, help="JSON of the `download` config section")
    parser.add_argument("--retries", type=int)
    parser.add_argument("--backoff-s", type=float)
    parser.add_argument("--timeout-s", type=float)
    parser.add_argument("--link-mode", choices=["symlink", "copy"])
    parser.add_argument("--require-checksums", action="store_true", default=None)
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    args = parser.parse_args(argv)

    params = json.loads(args.params) if args.params else {}
    for key in ("retries", "backoff_s", "timeout_s", "link_mode", "require_checksums", "progress"):
        if getattr(args, key) is not None:
            params[key] = getattr(args, key)
    options = DownloadOptions.from_params(params)
    registry = load_registry(args.registry)
    if args.dataset not in registry:
        raise PipelineInputError(STAGE, f"dataset {args.dataset!r} is not in the registry (known: {sorted(registry)})",
                                 args.dataset, args.registry, "add an entry or fix the name")
    lock_path = args.lock or args.registry.with_name(args.registry.stem + ".lock.json")
    mirror = args.mirror if args.mirror is not None else params.get("mirror")
    download_dataset(registry[args.dataset], args.out_dir, mirror, lock_path, options, args.cache_dir)
    return 0
