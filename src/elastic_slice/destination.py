"""Output destinations: checked before any work, claimed under a lock, staged beside, swapped in without loss.

A destination (an output folder, or the index file of `index --out`/`--write-into`) is checked up front: it must
name something of its own (not `.`, `..` or a mount point), not be a symbolic link, fit the filesystem's name
limits, have a writable folder above it, and not be, lie inside or contain the parent checkpoint (after resolving
links). While a run writes, it holds a lock beside the destination, so a second run to the same path stops at once.
The output is staged beside the destination and moved in by renames that never replace anything (Linux
`renameat2(RENAME_NOREPLACE)`, else a `mkdir`/`link` claim): a destination that appeared meanwhile is left as it
is. `--overwrite` replaces only an empty folder or an earlier output whose manifest lists exactly its files (names,
sizes, and the sha256 of every file under 16 MiB); the old one is renamed aside, checked again there, and deleted
only once the new one is in place, or put back if that fails.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import hashlib
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from . import hub
from .checkpoint import Checkpoint, is_plain_file_name, trusted_root
from .errors import InputError, RunFailure
from .manifest import MANIFEST_FORMAT, read_manifest, sha256_file
from .units import human_bytes
from .writer import MANIFEST_FILE, STAGING_MARKER

#: files of an earlier output up to this size are compared by sha256 before --overwrite replaces them; larger
#: ones (weight shards) by name and size, since hashing them would read the whole earlier output at every run
HASHED_BELOW = 16 * 2**20
#: names of helper files beside a destination (`.<stem>.partial-*`, `.<stem>.old-*`, `.<stem>.lock`) keep at most
#: this many bytes of the destination's name, so that they fit wherever the destination's name itself fits
_STEM_BYTES = 120
_RENAME_NOREPLACE = 1
_AT_FDCWD = -100

#: why a path may not be replaced by --overwrite (a clause), or None when it may
Refusal = Callable[[Path], "str | None"]


@dataclass(frozen=True)
class Protected:
    """A folder no output may be, lie inside or contain: the parent checkpoint, or its Hugging Face cache folder."""

    path: Path
    what: str


def parent_folders(source: str | Path | Checkpoint) -> list[Protected]:
    """The folders of a parent checkpoint (a folder, a Hub repo id or an opened checkpoint), links resolved; a Hub
    checkpoint's whole cache folder (`models--org--name`, holding its snapshots and blobs) counts as the parent."""
    if isinstance(source, Checkpoint):
        root = source.root
    elif hub.is_repo_id(str(source)):
        return [Protected(hub.cache_folder(str(source)), f"the Hugging Face cache folder of {source}")]
    else:
        root = Path(source)
        if not root.exists():
            return []  # nothing to protect; opening the checkpoint says it does not exist
    folders = {root.resolve(): f"the parent checkpoint {root.resolve()}"}
    cache = trusted_root(root)
    folders.setdefault(cache, f"the Hugging Face cache folder {cache} of the parent checkpoint")
    return [Protected(path, what) for path, what in folders.items()]


def check_folder(
    out: Path, overwrite: bool, parents: Sequence[Protected], option: str = "--out", existing: bool = True
) -> Path:
    """The absolute path `out` names, after every check that can be made before writing; `existing`: also apply
    the rules for a folder that is there already (refused, or with `overwrite` only an empty or earlier output)."""
    path = _checked_path(out, option)
    _check_overlap(path, parents, option)
    if existing:
        _check_existing(path, overwrite, option, "folder", earlier_output_refusal)
    elif path.exists() and not path.is_dir():
        raise InputError(f"{option} {path} is a file; give a folder path.")
    return path


def check_file(out: Path, overwrite: bool, parents: Sequence[Protected], option: str, refusal: Refusal) -> Path:
    """Like `check_folder` for a single file: its folder must exist already (it is never created)."""
    path = _checked_path(out, option)
    _check_overlap(path, parents, option)
    if not path.parent.is_dir():
        raise InputError(f"{option} {out}: the folder {path.parent} does not exist; create it first.")
    _check_existing(path, overwrite, option, "file", refusal)
    return path


def budget_folder(out: Path, name: str) -> Path:
    """`out/<name>`; a budget name must be one plain path component to become a folder name."""
    if not is_plain_file_name(name):
        raise InputError(f"budget name {name!r} cannot be used as a folder name under --out {out}.")
    return out / name


def _checked_path(out: Path, option: str) -> Path:
    """The absolute path of `out` (the folders above it resolved, its own name not), checked for what would make
    creating or renaming it fail: no name of its own, a name too long, a file or an unwritable folder above it."""
    name = out.name
    if name in ("", ".", ".."):
        raise InputError(
            f"{option} {out} does not name a new file or folder (its last part is '{name or out}'); "
            "give a path that ends in the new name."
        )
    above = out.absolute().parent
    while not os.path.exists(above):
        if os.path.islink(above):  # a link to nothing: creating the folders would create its target, anywhere
            raise InputError(f"{option} {out} cannot be created: {above} is a link to nothing, not a folder.")
        above = above.parent
    try:
        path = out.parent.resolve() / name
    except (OSError, RuntimeError) as exc:  # a loop of links above it
        raise InputError(f"{option} {out}: the folders above it cannot be resolved ({exc}).") from exc
    existing = path.parent
    missing = [name]
    while not os.path.lexists(existing):
        missing.append(existing.name)
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{option} {out} cannot be created: {existing} is not a folder.")
    limit = _name_max(existing)
    for part in missing:
        if len(os.fsencode(part)) > limit:
            raise InputError(
                f"{option} {out}: the name {part[:40]!r}... is {len(os.fsencode(part))} bytes, longer than the "
                f"{limit} bytes the filesystem allows; choose a shorter name."
            )
    if len(os.fsencode(str(path))) >= _path_max(existing):
        raise InputError(f"{option} {out}: the path is longer than the filesystem allows; choose a shorter one.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{option} {out} cannot be created: {existing} is not writable; choose another path.")
    return path


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _path_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_PATH_MAX")
    except (OSError, ValueError):
        return 4096


def _check_overlap(path: Path, parents: Sequence[Protected], option: str) -> None:
    resolved = path.resolve()
    for parent in parents:
        if resolved == parent.path:
            relation = "is"
        elif resolved.is_relative_to(parent.path):
            relation = "lies inside"
        elif parent.path.is_relative_to(resolved):
            relation = "contains"
        else:
            continue
        raise InputError(f"{option} {path} {relation} {parent.what}; choose an output path outside it.")


def _check_existing(path: Path, overwrite: bool, option: str, kind: str, refusal: Refusal) -> None:
    """Refuse what is at `path` unless `overwrite` is given and `refusal` finds nothing against replacing it."""
    if os.path.islink(path):
        raise InputError(
            f"{option} {path} is a symbolic link (to {os.readlink(path)}); elastic-slice never writes through "
            "links: give the real path."
        )
    if not os.path.lexists(path):
        return
    if kind == "folder" and not path.is_dir():
        raise InputError(f"{option} {path} is a file; give a folder path.")
    if kind == "file" and path.is_dir():
        raise InputError(f"{option} {path} is a folder; give the path of a file.")
    if os.path.ismount(path):
        raise InputError(f"{option} {path} is a mount point, which cannot be replaced; give a path inside it.")
    if not overwrite:
        raise InputError(f"{option} {path} already exists; choose another path or pass --overwrite to replace it.")
    reason = refusal(path)
    if reason is not None:
        raise InputError(_refused(path, option, reason))


def _refused(path: Path, option: str, reason: str) -> str:
    return f"{option} {path} is not something elastic-slice wrote ({reason}); remove it yourself or choose another path."


def earlier_output_refusal(folder: Path) -> str | None:
    """None when `folder` is empty or an earlier elastic-slice output: its manifest lists exactly its files, each a
    plain file of the listed size and, under `HASHED_BELOW` bytes, the listed sha256; else what is wrong."""
    try:
        entries = sorted(os.listdir(folder))
    except OSError as exc:
        return f"it cannot be read: {exc.strerror or exc}"
    if not entries:
        return None
    if MANIFEST_FILE not in entries:
        return f"it holds {_some(entries)} and no {MANIFEST_FILE}"
    listed = _manifest_files(folder / MANIFEST_FILE)
    if listed is None:
        return f"its {MANIFEST_FILE} is not a manifest elastic-slice wrote"
    written = (folder / MANIFEST_FILE).stat().st_mtime_ns  # the manifest is written last
    foreign = [name for name in entries if name != MANIFEST_FILE and name not in listed]
    if foreign:
        return f"{_some(foreign)} {'is' if len(foreign) == 1 else 'are'} not in its manifest"
    for name, entry in listed.items():
        problem = _file_problem(folder / name, entry, written)
        if problem is not None:
            return f"{name!r} {problem}"
    return None


def _some(names: list[str]) -> str:
    shown = ", ".join(repr(name) for name in names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _manifest_files(path: Path) -> dict[str, dict[str, object]] | None:
    """The `files` of an elastic-slice manifest (plain names inside the folder, each with a size and sha256), or
    None when `path` is not one."""
    if not path.is_file() or path.is_symlink():
        return None
    try:
        manifest = read_manifest(path)
    except InputError:
        return None
    return manifest["files"] if manifest.get("format") == MANIFEST_FORMAT else None


def _file_problem(path: Path, entry: dict[str, object], written: int) -> str | None:
    """What is wrong with one listed file: not a plain file, another size, modified after the manifest (`written`,
    its mtime: an edit in place of a shard keeps its size), or, when small, another sha256."""
    try:
        stat = path.lstat()
        if not path.is_file() or path.is_symlink():
            return "is not a plain file"
        if stat.st_size != entry.get("size"):
            return f"has {stat.st_size} bytes where its manifest says {entry.get('size')}"
        if stat.st_mtime_ns > written:
            return "was changed after elastic-slice wrote it (modified after its manifest)"
        if stat.st_size < HASHED_BELOW and sha256_file(path) != entry.get("sha256"):
            return "was changed after elastic-slice wrote it"
    except FileNotFoundError:
        return "is listed in its manifest but missing"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    return None


def check_free_space(folder: Path, needed: int) -> None:
    """Fail before writing when the disk under `folder` cannot hold `needed` bytes."""
    probe = folder.absolute()
    while not os.path.exists(probe):
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise RunFailure(
            f"not enough disk space under {probe}: the output needs {human_bytes(needed)}, "
            f"{human_bytes(free)} is free."
        )


@contextmanager
def staged_folders(paths: Sequence[Path], overwrite: bool, option: str = "--out") -> Iterator[list[Path]]:
    """Temporary folders beside `paths` (checked with `check_folder`) that replace them only when the block
    finishes without error; until then each destination is locked against other elastic-slice runs."""
    with _staged(paths, overwrite, option, "folder", earlier_output_refusal) as stagings:
        yield stagings


@contextmanager
def staged_file(path: Path, overwrite: bool, option: str, refusal: Refusal) -> Iterator[Path]:
    """A temporary file beside `path` (checked with `check_file`) that becomes `path` when the block finishes."""
    with _staged([path], overwrite, option, "file", refusal) as stagings:
        yield stagings[0]


@contextmanager
def _staged(paths: Sequence[Path], overwrite: bool, option: str, kind: str, refusal: Refusal) -> Iterator[list[Path]]:
    claims: list[_Claim] = []
    finished = False
    try:
        for path in paths:
            claim = _Claim(path, overwrite, option, kind, refusal)
            claims.append(claim)
            claim.open()
        yield [claim.staging for claim in claims if claim.staging is not None]
        _swap_all(claims)
        finished = True
    finally:
        for claim in reversed(claims):
            claim.release(finished)


def _swap_all(claims: list[_Claim]) -> None:
    """Move every staged output into place, or none: a failure puts back what was there before."""
    try:
        for claim in claims:
            claim.retire()
        for claim in claims:
            claim.install()
    except BaseException as exc:
        for claim in reversed(claims):
            claim.undo()
        if isinstance(exc, OSError):
            failed = Path(exc.filename) if exc.filename else claims[0].path
            raise RunFailure(
                f"moving the finished output into place failed: {exc.strerror or exc} ({failed}); nothing at "
                f"{', '.join(str(claim.path) for claim in claims)} was changed."
            ) from exc
        raise
    for claim in claims:
        claim.discard_retired()


@dataclass
class _Claim:
    """One destination while a run writes it: its lock, its staging path and, during a swap, the old one aside."""

    path: Path
    overwrite: bool
    option: str
    kind: str
    refusal: Refusal
    staging: Path | None = None
    retired: Path | None = None
    installed: bool = False
    created: list[Path] = field(default_factory=list)
    lock: int = -1

    @property
    def stem(self) -> str:
        return _stem(self.path.name)

    def open(self) -> None:
        """Create missing folders above the destination, lock it, clean what killed runs left, stage."""
        try:
            self.created = _make_folders(self.path.parent)
            self.lock = _lock(self.path.parent / f".{self.stem}.lock", self.path, self.option)
            _remove_abandoned(self.path, self.stem, self.refusal)
            _check_existing(self.path, self.overwrite, self.option, self.kind, self.refusal)
            prefix = f".{self.stem}.partial-{os.getpid()}-"
            if self.kind == "folder":
                self.staging = Path(tempfile.mkdtemp(prefix=prefix, dir=self.path.parent))
                self.staging.chmod(0o777 & ~_umask())
                (self.staging / STAGING_MARKER).touch()
            else:
                handle, name = tempfile.mkstemp(prefix=prefix, dir=self.path.parent)
                os.close(handle)
                self.staging = Path(name)
                self.staging.chmod(0o666 & ~_umask())
        except OSError as exc:
            raise InputError(f"cannot prepare {self.option} {self.path}: {exc.strerror or exc}"
                             f"{f' ({exc.filename})' if exc.filename else ''}.") from exc

    def retire(self) -> None:
        """With --overwrite, rename what is at the destination aside and check it again there."""
        if not self.overwrite or not os.path.lexists(self.path):
            return
        aside = self.path.parent / f".{self.stem}.old-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            _rename_noreplace(self.path, aside)
        except FileNotFoundError:
            return  # removed meanwhile: nothing to replace
        self.retired = aside
        reason = "it is a symbolic link" if os.path.islink(aside) else self.refusal(aside)
        if reason is not None:
            raise InputError(_refused(self.path, self.option, reason))

    def install(self) -> None:
        assert self.staging is not None
        if self.kind == "folder":
            (self.staging / STAGING_MARKER).unlink(missing_ok=True)
        try:
            _rename_noreplace(self.staging, self.path)
        except FileExistsError:
            raise InputError(
                f"{self.option} {self.path} appeared while elastic-slice was writing; it was left as it is and the "
                "new output was removed: choose another path, or pass --overwrite to replace an earlier output."
            ) from None
        self.installed = True

    def undo(self) -> None:
        """Take back an installed output and put the retired one back (after a failed swap)."""
        if self.installed and self.staging is not None:
            _rename_noreplace(self.path, self.staging)
            self.installed = False
        if self.retired is not None:
            try:
                _rename_noreplace(self.retired, self.path)
            except OSError as exc:
                raise RunFailure(
                    f"{self.option} {self.path} could not be put back ({exc.strerror or exc}); the previous "
                    f"output is kept at {self.retired}."
                ) from exc
            self.retired = None

    def discard_retired(self) -> None:
        if self.retired is not None:
            _remove(self.retired)
            self.retired = None

    def release(self, finished: bool) -> None:
        """Remove the staging path unless it was moved into place, the lock, and folders created for nothing (the
        lock file is in the innermost of them, so it goes first)."""
        if self.staging is not None and not self.installed:
            _remove(self.staging)
        if self.lock >= 0:
            _unlock(self.lock, self.path.parent / f".{self.stem}.lock")
            self.lock = -1
        if not finished:
            for folder in reversed(self.created):
                try:
                    folder.rmdir()
                except OSError:
                    break


def _stem(name: str) -> str:
    """The destination's name in helper file names: itself, or a prefix and a hash when it is long."""
    if len(os.fsencode(name)) <= _STEM_BYTES:
        return name
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:16]
    return os.fsdecode(os.fsencode(name)[:60]) + "~" + digest


def _make_folders(folder: Path) -> list[Path]:
    """Create `folder` and any missing folder above it; the ones created, outermost first."""
    missing = []
    while not os.path.lexists(folder):
        missing.append(folder)
        folder = folder.parent
    created = []
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            continue
        created.append(path)
    return created


def _lock(lock_path: Path, path: Path, option: str) -> int:
    """Hold an exclusive lock on `lock_path` (created if needed), or fail naming the run that holds it."""
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            by = f" (process {holder})" if holder.isdigit() else ""
            raise InputError(
                f"{option} {path} is being written by another elastic-slice run{by}; wait for it to finish or "
                "choose another path."
            ) from None
        try:
            current = os.stat(lock_path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:  # else the holder removed the file between our open and our lock: take the new one
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            return fd
        os.close(fd)


def _unlock(fd: int, lock_path: Path) -> None:
    try:
        if os.stat(lock_path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
            lock_path.unlink()
    except OSError:  # gone already, or the folder turned read-only: the lock ends with the descriptor anyway
        pass
    os.close(fd)


def _remove_abandoned(path: Path, stem: str, refusal: Refusal) -> None:
    """Clean what runs killed outright (SIGKILL, power loss) left beside `path`, touching only what is provably
    elastic-slice's: a staging folder holding `STAGING_MARKER` (or a staged file `refusal` accepts) is removed; an
    old output renamed aside that `refusal` accepts is put back when nothing took its place, else removed. Anything
    else with such a name (a user's own folder, say) is left as it is."""
    pattern = re.compile(rf"^\.{re.escape(stem)}\.(partial|old)-(\d+)-")
    for sibling in path.parent.iterdir():
        match = pattern.match(sibling.name)
        if match is None or _process_alive(int(match.group(2))) or sibling.is_symlink():
            continue
        if match.group(1) == "partial":
            ours = (sibling / STAGING_MARKER).is_file() if sibling.is_dir() else refusal(sibling) is None
        else:
            ours = refusal(sibling) is None
        if not ours:
            continue
        if match.group(1) == "old" and not os.path.lexists(path):
            try:
                _rename_noreplace(sibling, path)
                continue
            except OSError:
                pass
        _remove(sibling)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    """Remove a staging or retired path, as far as possible (what cannot be removed is cleaned by a later run)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _rename_noreplace(source: Path, target: Path) -> None:
    """Rename `source` to `target`, failing with FileExistsError when anything is at `target`; never replaces."""
    renameat2 = _renameat2()
    if renameat2 is not None:
        if renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code in (errno.EEXIST, errno.ENOTEMPTY):
            raise FileExistsError(code, os.strerror(code), str(target))
        if code not in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # these: no renameat2 here, fall back
            raise OSError(code, os.strerror(code), str(target))
    _claim_and_rename(source, target)


def _claim_and_rename(source: Path, target: Path) -> None:
    """The fallback where renameat2 is missing: claim `target` with an atomic mkdir (a folder) or link (a file)."""
    if source.is_dir() and not source.is_symlink():
        os.mkdir(target)  # FileExistsError when taken; renaming onto our own empty folder then loses nothing
        try:
            os.rename(source, target)
        except BaseException:
            os.rmdir(target)
            raise
    else:
        os.link(source, target, follow_symlinks=False)
        os.unlink(source)


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    """libc's renameat2 (glibc 2.28 and later), or None."""
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function
