"""The weights registry: known checkpoints, a resumable verified download, and lookup.

Known checkpoints are declared in ``checkpoints.toml`` files anywhere under
``renderer/`` (one per model family)::

    [[checkpoint]]
    name = "vqgan_imagenet_f16_16384"
    family = "vqgan"
    url = "https://example.org/last.ckpt"
    filename = "vqgan_imagenet_f16_16384.ckpt"
    size = 980092370          # bytes, 0 = unknown
    sha256 = ""               # "" = unknown: pinned on first download
    description = "VQGAN f16 16384 codes, ImageNet"
    extra = [{url = "https://example.org/model.yaml", filename = "vqgan_imagenet_f16_16384.yaml", size = 0, sha256 = ""}]

:func:`fetch` downloads into ``<weights_dir>/<filename>.part`` with HTTP Range
resume, verifies size and sha256 when they are known (or pins the computed
sha256 in ``<filename>.sha256`` when they are not), then renames atomically.
Nothing here imports torch, so the command line can use it cheaply.
"""
from __future__ import annotations

import http.client
import logging
import os
import re
import time
import tomllib
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from exhibits.files import sha256_file
from renderer.base import GeneratorUnavailable

log = logging.getLogger(__name__)

REGISTRY_FILENAME = "checkpoints.toml"
USER_AGENT = "kiosk-weights/1"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CHECKPOINT_KEYS = {"name", "family", "url", "filename", "size", "sha256", "description", "extra"}
_REQUIRED_KEYS = ("name", "family", "url", "filename", "size", "sha256")
_FILE_KEYS = {"url", "filename", "size", "sha256"}

class WeightsError(RuntimeError):
    """A registry file is invalid or a download failed; the message names the file or URL."""


class ChecksumMismatch(WeightsError):
    """A downloaded file does not have the expected size or sha256; it was deleted."""


class WeightsMissing(GeneratorUnavailable):
    """A checkpoint is not installed; the message says which command fetches it."""


@dataclass(frozen=True)
class FileSpec:
    """One downloadable file: the checkpoint itself or a companion (a config .yaml)."""

    url: str
    filename: str
    size: int = 0  # bytes; 0 = unknown
    sha256: str = ""  # lowercase hex; "" = unknown


@dataclass(frozen=True)
class Checkpoint:
    name: str
    family: str
    url: str
    filename: str
    size: int
    sha256: str
    description: str = ""
    extra: tuple[FileSpec, ...] = ()
    source: Path | None = None  # the checkpoints.toml it came from

    @property
    def main(self) -> FileSpec:
        return FileSpec(self.url, self.filename, self.size, self.sha256)

    @property
    def files(self) -> tuple[FileSpec, ...]:
        return (self.main, *self.extra)


# --------------------------------------------------------------------------- registry


def _registry_files(sources: Any) -> list[Path]:
    """Expand ``sources`` (None, a folder, a .toml file, or a list of them) into toml paths."""
    if sources is None:
        sources = [Path(__file__).resolve().parent]
    elif isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    found: list[Path] = []
    for src in sources:
        path = Path(src)
        if path.is_dir():
            found.extend(sorted(path.rglob(REGISTRY_FILENAME)))
        elif path.is_file():
            found.append(path)
        else:
            raise WeightsError(f"checkpoint registry {path} does not exist")
    return found


def _check_url(url: Any, where: str) -> str:
    if not isinstance(url, str) or not re.match(r"^https?://[^\s/]+", url):
        raise WeightsError(f"{where}: 'url' must be an http(s) URL, got {url!r}")
    return url


def _check_filename(name: Any, where: str) -> str:
    if (
        not isinstance(name, str)
        or not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or name.startswith(".")
        or name.endswith((".part", ".sha256", ".lock"))
    ):
        raise WeightsError(
            f"{where}: 'filename' must be a plain file name (no folders, not hidden, "
            f"not ending in .part/.sha256/.lock), got {name!r}"
        )
    return name


def _check_size(size: Any, where: str) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise WeightsError(f"{where}: 'size' must be an integer number of bytes >= 0 (0 = unknown), got {size!r}")
    return size


def _check_sha(sha: Any, where: str) -> str:
    if not isinstance(sha, str) or (sha and not _SHA256_RE.match(sha.lower())):
        raise WeightsError(f"{where}: 'sha256' must be 64 hex digits or \"\" (unknown), got {sha!r}")
    return sha.lower()


def _parse_file_spec(raw: Any, where: str) -> FileSpec:
    if not isinstance(raw, Mapping):
        raise WeightsError(f"{where}: must be a table with keys {sorted(_FILE_KEYS)}")
    unknown = set(raw) - _FILE_KEYS
    if unknown:
        raise WeightsError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(_FILE_KEYS)}")
    for key in ("url", "filename"):
        if key not in raw:
            raise WeightsError(f"{where}: missing key {key!r}")
    return FileSpec(
        url=_check_url(raw["url"], where),
        filename=_check_filename(raw["filename"], where),
        size=_check_size(raw.get("size", 0), where),
        sha256=_check_sha(raw.get("sha256", ""), where),
    )


def _parse_checkpoint(raw: Any, where: str, source: Path) -> Checkpoint:
    if not isinstance(raw, Mapping):
        raise WeightsError(f"{where}: each [[checkpoint]] must be a table")
    unknown = set(raw) - _CHECKPOINT_KEYS
    if unknown:
        raise WeightsError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(_CHECKPOINT_KEYS)}")
    missing = [k for k in _REQUIRED_KEYS if k not in raw]
    if missing:
        raise WeightsError(f"{where}: missing keys {missing}")
    for key in ("name", "family", "description"):
        if key in raw and (not isinstance(raw[key], str) or (key != "description" and not raw[key].strip())):
            raise WeightsError(f"{where}: {key!r} must be a non-empty string, got {raw[key]!r}")
    where = f"{where} ({raw['name']})"
    extra_raw = raw.get("extra", [])
    if not isinstance(extra_raw, list):
        raise WeightsError(f"{where}: 'extra' must be an array of tables")
    extra = tuple(_parse_file_spec(e, f"{where} extra[{i}]") for i, e in enumerate(extra_raw))
    ckpt = Checkpoint(
        name=raw["name"],
        family=raw["family"],
        url=_check_url(raw["url"], where),
        filename=_check_filename(raw["filename"], where),
        size=_check_size(raw["size"], where),
        sha256=_check_sha(raw["sha256"], where),
        description=raw.get("description", ""),
        extra=extra,
        source=source,
    )
    names = [f.filename for f in ckpt.files]
    if len(set(names)) != len(names):
        raise WeightsError(f"{where}: the checkpoint and its extra files must have distinct filenames, got {names}")
    return ckpt


def load_registry_file(path: Path) -> list[Checkpoint]:
    """Parse and validate one ``checkpoints.toml``."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise WeightsError(f"{path}: invalid TOML: {exc}") from exc
    unknown = set(data) - {"checkpoint"}
    if unknown:
        raise WeightsError(f"{path}: unknown top-level keys {sorted(unknown)}; only [[checkpoint]] tables are allowed")
    tables = data.get("checkpoint", [])
    if not isinstance(tables, list):
        raise WeightsError(f"{path}: 'checkpoint' must be an array of tables ([[checkpoint]])")
    return [_parse_checkpoint(t, f"{path}: checkpoint[{i}]", path) for i, t in enumerate(tables)]


def list_checkpoints(sources: Any = None) -> list[Checkpoint]:
    """Every known checkpoint, sorted by name.

    ``sources``: None (every ``checkpoints.toml`` under ``renderer/``), a folder to
    search recursively, a toml file, or a list of folders and files.
    """
    by_name: dict[str, Checkpoint] = {}
    by_file: dict[str, Checkpoint] = {}
    for path in _registry_files(sources):
        for ckpt in load_registry_file(path):
            if ckpt.name in by_name:
                raise WeightsError(
                    f"checkpoint {ckpt.name!r} is declared twice: {by_name[ckpt.name].source} and {path}"
                )
            for spec in ckpt.files:
                other = by_file.get(spec.filename)
                if other is not None:
                    raise WeightsError(
                        f"filename {spec.filename!r} is used by {other.name!r} ({other.source}) "
                        f"and {ckpt.name!r} ({path})"
                    )
                by_file[spec.filename] = ckpt
            by_name[ckpt.name] = ckpt
    return [by_name[n] for n in sorted(by_name)]


def get_checkpoint(name: str, sources: Any = None) -> Checkpoint:
    known = {c.name: c for c in list_checkpoints(sources)}
    try:
        return known[name]
    except KeyError:
        raise WeightsError(
            f"unknown checkpoint {name!r}; known checkpoints: {', '.join(sorted(known)) or '(none)'}"
        ) from None


# --------------------------------------------------------------------------- lookup


def _pinned_sha(weights_dir: Path, spec: FileSpec) -> str:
    if spec.sha256:
        return spec.sha256
    sidecar = weights_dir / f"{spec.filename}.sha256"
    if sidecar.is_file():
        text = sidecar.read_text(encoding="utf-8").split()
        if text and _SHA256_RE.match(text[0].lower()):
            return text[0].lower()
    return ""


def resolve(name: str, weights_dir: str | os.PathLike, sources: Any = None) -> Path:
    """The path of an installed checkpoint (its companion files lie beside it).

    Raises :class:`WeightsMissing` (a :class:`GeneratorUnavailable`) naming the
    command that installs it.
    """
    ckpt = get_checkpoint(name, sources)
    weights_dir = Path(weights_dir)
    for spec in ckpt.files:
        path = weights_dir / spec.filename
        if not path.is_file():
            partial = " (a partial download is present and will resume)" if _part(path).exists() else ""
            raise WeightsMissing(
                f"weights for {name!r} are not installed: {path} is missing{partial}; "
                f"run: python -m kiosk fetch-models {name}"
            )
        if spec.size and path.stat().st_size != spec.size:
            raise WeightsMissing(
                f"weights for {name!r} look damaged: {path} has {path.stat().st_size} bytes, "
                f"expected {spec.size}; delete it and run: python -m kiosk fetch-models {name}"
            )
    return weights_dir / ckpt.filename


def status(weights_dir: str | os.PathLike, sources: Any = None) -> list[dict[str, Any]]:
    """One row per known checkpoint, sorted by name.

    Keys: name, state ("installed": every file present; "partial": some bytes, e.g. an
    interrupted ``.part``; "missing"), family, description, path, present_bytes,
    total_bytes (0 when a size is unknown).
    """
    weights_dir = Path(weights_dir)
    rows: list[dict[str, Any]] = []
    for ckpt in list_checkpoints(sources):
        present = 0
        complete = True
        for spec in ckpt.files:
            path = weights_dir / spec.filename
            if path.is_file() and (not spec.size or path.stat().st_size == spec.size):
                present += path.stat().st_size
            else:
                complete = False
                if _part(path).is_file():
                    present += _part(path).stat().st_size
        state = "installed" if complete else ("partial" if present else "missing")
        total = sum(s.size for s in ckpt.files) if all(s.size for s in ckpt.files) else 0
        rows.append({"name": ckpt.name, "state": state, "family": ckpt.family, "description": ckpt.description,
                     "path": weights_dir / ckpt.filename, "present_bytes": present, "total_bytes": total})
    return rows


# --------------------------------------------------------------------------- download


def _part(path: Path) -> Path:
    return path.with_name(path.name + ".part")


class _Interrupted(Exception):
    """The transfer stopped early; the .part file keeps what arrived."""


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialise downloads of one file across processes (the worker and the CLI)."""
    import fcntl

    with open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _make_bar(progress: bool | Callable[[int, int], None], spec: FileSpec, start: int) -> Callable[[int, int], None]:
    """A callback ``(done_bytes, total_bytes)``; a tqdm bar when ``progress`` is True."""
    if callable(progress):
        return progress
    if not progress:
        return lambda done, total: None
    from tqdm import tqdm

    bar = tqdm(total=spec.size or None, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
               desc=spec.filename, leave=True)

    def update(done: int, total: int) -> None:
        if total and bar.total != total:
            bar.total = total
        bar.update(done - bar.n)
        if total and done >= total:
            bar.close()

    return update


def _open(url: str, offset: int, timeout: float) -> Any:
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - http(s) only, checked in the registry


def _content_range_start(value: str | None) -> int | None:
    m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", value or "")
    return int(m.group(1)) if m else None


def _transfer_once(spec: FileSpec, part: Path, timeout: float, chunk_size: int,
                   report: Callable[[int, int], None]) -> None:
    """One HTTP request appending to ``part``; raises :class:`_Interrupted` if it stops early."""
    offset = part.stat().st_size if part.exists() else 0
    if spec.size and offset > spec.size:
        log.warning("%s is larger than the expected %d bytes; starting over", part, spec.size)
        part.unlink()
        offset = 0
    if spec.size and offset == spec.size:
        return
    try:
        resp = _open(spec.url, offset, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            # The server says our range is past the end: the .part is complete or stale.
            exc.close()
            if spec.size and offset == spec.size:
                return
            log.warning("server refused to resume %s at byte %d (416); starting over", spec.filename, offset)
            part.unlink()
            raise _Interrupted("range not satisfiable") from exc
        if exc.code in (408, 429) or exc.code >= 500:
            raise _Interrupted(f"HTTP {exc.code}") from exc
        raise WeightsError(f"download of {spec.filename} failed: HTTP {exc.code} {exc.reason} from {spec.url}") from exc
    with resp:
        code = resp.status
        if offset and code == 206:
            start = _content_range_start(resp.headers.get("Content-Range"))
            if start != offset:
                raise WeightsError(
                    f"download of {spec.filename}: server answered Range bytes={offset}- with "
                    f"Content-Range {resp.headers.get('Content-Range')!r}; refusing to splice"
                )
            mode = "ab"
        elif code == 200:
            if offset:
                log.info("server ignored the Range request for %s; restarting from byte 0", spec.filename)
            offset = 0
            mode = "wb"
        else:
            raise WeightsError(f"download of {spec.filename}: unexpected HTTP {code} from {spec.url}")
        length = resp.headers.get("Content-Length")
        expected_total = offset + int(length) if length and length.isdigit() else spec.size
        done = offset
        try:
            with open(part, mode) as out:
                while block := resp.read(chunk_size):
                    out.write(block)
                    done += len(block)
                    report(done, expected_total or spec.size)
                out.flush()
                os.fsync(out.fileno())
        except (OSError, http.client.HTTPException) as exc:
            raise _Interrupted(f"{type(exc).__name__}: {exc}") from exc
        if expected_total and done < expected_total:
            raise _Interrupted(f"connection closed after {done} of {expected_total} bytes")


def _verify(spec: FileSpec, part: Path, expected_sha: str) -> str:
    size = part.stat().st_size
    if spec.size and size != spec.size:
        part.unlink()
        raise ChecksumMismatch(
            f"{spec.filename}: downloaded {size} bytes but the registry says {spec.size}; "
            f"the partial file was deleted ({spec.url})"
        )
    digest = sha256_file(part)
    if expected_sha and digest != expected_sha:
        part.unlink()
        raise ChecksumMismatch(
            f"{spec.filename}: sha256 mismatch: expected {expected_sha}, got {digest}; "
            f"the download was deleted ({spec.url})"
        )
    return digest


def fetch_file(spec: FileSpec, weights_dir: str | os.PathLike, progress: bool | Callable[[int, int], None] = True,
               *, timeout: float = 30.0, retries: int = 5, backoff: float = 2.0,
               chunk_size: int = 1 << 16) -> Path:
    """Download one file into ``weights_dir`` (resuming a ``.part``), verify it, rename it into place."""
    weights_dir = Path(weights_dir)
    weights_dir.mkdir(parents=True, exist_ok=True)
    final = weights_dir / spec.filename
    part = _part(final)
    with _file_lock(weights_dir / f"{spec.filename}.lock"):
        if final.is_file():
            if spec.size and final.stat().st_size != spec.size:
                raise WeightsError(
                    f"{final} exists with {final.stat().st_size} bytes, expected {spec.size}; delete it and fetch again"
                )
            log.info("%s already present", final)
            return final
        expected_sha = _pinned_sha(weights_dir, spec)
        start = part.stat().st_size if part.exists() else 0
        if start:
            log.info("resuming %s from byte %d", spec.filename, start)
        report = _make_bar(progress, spec, start)
        attempt = 0
        while True:
            try:
                _transfer_once(spec, part, timeout, chunk_size, report)
                break
            except (_Interrupted, urllib.error.URLError, TimeoutError, ConnectionError,
                    http.client.HTTPException) as exc:
                attempt += 1
                kept = part.stat().st_size if part.exists() else 0
                if attempt > retries:
                    raise WeightsError(
                        f"download of {spec.filename} from {spec.url} failed after {attempt} attempt(s): {exc}; "
                        f"{kept} bytes kept in {part}, run the fetch again to resume"
                    ) from exc
                delay = min(backoff * 2 ** (attempt - 1), 60.0)
                log.warning("download of %s interrupted (%s); %d bytes kept; retry %d/%d in %.1fs",
                            spec.filename, exc, kept, attempt, retries, delay)
                time.sleep(delay)
        digest = _verify(spec, part, expected_sha)
        if not expected_sha:
            from exhibits.files import atomic_write_text

            atomic_write_text(weights_dir / f"{spec.filename}.sha256", f"{digest}  {spec.filename}\n")
            log.warning("%s has no sha256 in the registry: pinned on first download as %s (in %s.sha256)",
                        spec.filename, digest, spec.filename)
        os.replace(part, final)
        _fsync_dir(weights_dir)
    log.info("installed %s (%d bytes, sha256 %s)", final, final.stat().st_size, digest)
    return final


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fetch(name_or_entry: str | Checkpoint, weights_dir: str | os.PathLike,
          progress: bool | Callable[[int, int], None] = True, *, sources: Any = None,
          timeout: float = 30.0, retries: int = 5, backoff: float = 2.0) -> Path:
    """Install a checkpoint and its companion files; returns the checkpoint's path.

    Safe to call again after an interruption: the ``.part`` file is resumed.
    """
    ckpt = name_or_entry if isinstance(name_or_entry, Checkpoint) else get_checkpoint(name_or_entry, sources)
    paths = [fetch_file(spec, weights_dir, progress, timeout=timeout, retries=retries, backoff=backoff)
             for spec in ckpt.files]
    return paths[0]


def fetch_many(names: Sequence[str], weights_dir: str | os.PathLike, progress: bool = True,
               sources: Any = None, **kw: Any) -> dict[str, Path]:
    """Fetch several checkpoints by name (all known ones when ``names`` is empty)."""
    known = list_checkpoints(sources)
    wanted = list(names) or [c.name for c in known]
    by_name = {c.name: c for c in known}
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise WeightsError(f"unknown checkpoint(s) {unknown}; known: {', '.join(sorted(by_name)) or '(none)'}")
    return {n: fetch(by_name[n], weights_dir, progress, **kw) for n in wanted}
