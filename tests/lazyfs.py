"""A FUSE filesystem that forgets unsynced writes when the power goes, like Jepsen's LazyFS.

It mirrors a backing directory that stands for the disk. Writes and truncations stay in this
process's memory (the page cache) until the file is fsync'd or fdatasync'd, and only then
reach the backing directory. Killing this process is the power cut: what was never synced
is gone, and mounting the backing directory again shows exactly what a machine would find
after a reboot.

Directory operations (create, rename, unlink, mkdir) reach the backing directory at once:
the Redis-compatible server fsyncs the directory after each of them anyway, and the promise
under test is about the contents of the append-only file.

Run as `python tests/lazyfs.py BACKING_DIR MOUNTPOINT`; `LazyMount` does that for a test.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# One unsynced change: ("write", offset, data) or ("truncate", length, b"").
Change = tuple[str, int, bytes]


@dataclass
class Unsynced:
    """The changes to one file that live only in memory, in the order they were made."""

    changes: list[Change] = field(default_factory=list)
    size: int = 0  # the size every process sees, with these changes applied


class LazyFS:
    """The filesystem operations; a subclass of mfusepy.Operations is made in `serve`."""

    use_ns = True  # mfusepy: timestamps in nanoseconds, as os.utime(ns=...) takes them

    def __init__(self, backing: str) -> None:
        self.backing = os.path.realpath(backing)
        # By path: a file renamed before its sync keeps its unsynced changes. mfusepy runs
        # single-threaded here (nothreads), so no lock is needed.
        self.unsynced: dict[str, Unsynced] = {}

    def _real(self, path: str) -> str:
        return self.backing + path

    def _pending(self, path: str) -> Unsynced:
        if path not in self.unsynced:
            self.unsynced[path] = Unsynced(size=os.path.getsize(self._real(path)))
        return self.unsynced[path]

    # Reading: the backing file with the unsynced changes replayed over the requested range.

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        st = os.lstat(self._real(path))
        attrs = {key: getattr(st, key) for key in (
            "st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_atime", "st_mtime",
            "st_ctime", "st_blocks")}
        if path in self.unsynced:
            attrs["st_size"] = self.unsynced[path].size
        return attrs

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with open(self._real(path), "rb") as f:
            f.seek(offset)
            view = bytearray(f.read(size))
        pending = self.unsynced.get(path)
        if pending is None:
            return bytes(view)
        end = min(offset + size, pending.size)
        view.extend(b"\0" * max(0, end - offset - len(view)))
        for kind, at, data in pending.changes:
            if kind == "truncate":
                # Bytes past a truncation read as zeros until a later write fills them.
                cut = max(at - offset, 0)
                view[cut:] = b"\0" * max(len(view) - cut, 0)
                continue
            lo, hi = max(at, offset), min(at + len(data), offset + len(view))
            if lo < hi:
                view[lo - offset:hi - offset] = data[lo - at:hi - at]
        return bytes(view[:max(end - offset, 0)])

    # Writing: into memory only.

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        pending = self._pending(path)
        pending.changes.append(("write", offset, bytes(data)))
        pending.size = max(pending.size, offset + len(data))
        return len(data)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        pending = self._pending(path)
        pending.changes.append(("truncate", length, b""))
        pending.size = length
        return 0

    # Syncing: the only way anything reaches the disk.

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        pending = self.unsynced.pop(path, None)
        if pending is None:
            return 0
        fd = os.open(self._real(path), os.O_WRONLY)
        try:
            for kind, at, data in pending.changes:
                if kind == "truncate":
                    os.ftruncate(fd, at)
                else:
                    os.pwrite(fd, data, at)
        finally:
            os.close(fd)
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        return 0  # directory operations are durable at once (see the module docstring)

    # Everything else passes through to the backing directory.

    def open(self, path: str, flags: int) -> int:
        if flags & os.O_TRUNC:
            self.truncate(path, 0)
        return 0

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        os.close(os.open(self._real(path), os.O_CREAT | os.O_WRONLY, mode))
        return 0

    def release(self, path: str, fh: int) -> int:
        return 0  # closing does not sync: unsynced changes outlive the file handle

    def flush(self, path: str, fh: int) -> int:
        return 0

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._real(path))]

    def mkdir(self, path: str, mode: int) -> int:
        os.mkdir(self._real(path), mode)
        return 0

    def rmdir(self, path: str) -> int:
        os.rmdir(self._real(path))
        return 0

    def unlink(self, path: str) -> int:
        os.unlink(self._real(path))
        self.unsynced.pop(path, None)
        return 0

    def rename(self, old: str, new: str) -> int:
        os.rename(self._real(old), self._real(new))
        self.unsynced.pop(new, None)
        if old in self.unsynced:
            self.unsynced[new] = self.unsynced.pop(old)
        return 0

    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self._real(path), mode)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        os.utime(self._real(path), ns=times)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self._real(path))
        return {key: getattr(st, key) for key in (
            "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files",
            "f_flag", "f_frsize", "f_namemax")}


def serve(backing: str, mountpoint: str) -> None:
    import mfusepy  # here, so that LazyMount imports without libfuse installed

    # mfusepy answers an OSError from the backing directory with its errno.
    class Operations(LazyFS, mfusepy.Operations):
        pass

    mfusepy.FUSE(Operations(backing), mountpoint, foreground=True, nothreads=True,
                 fsname="lazyfs")


class LazyMount:
    """Mounts LazyFS in a child process; `power_cut` kills it and leaves the backing dir."""

    def __init__(self, backing: Path, mountpoint: Path) -> None:
        self.backing = backing
        self.mountpoint = mountpoint
        self.log = mountpoint.with_name(mountpoint.name + ".log")
        self.process: subprocess.Popen[bytes] | None = None

    def mount(self, timeout: float = 10.0) -> None:
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, __file__, str(self.backing), str(self.mountpoint)],
                stdout=log, stderr=log, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not os.path.ismount(self.mountpoint):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.unmount()
                said = self.log.read_text(errors="replace").strip()
                raise RuntimeError(f"lazyfs did not mount on {self.mountpoint}: "
                                   f"{said or 'timed out'}")
            time.sleep(0.02)

    def power_cut(self) -> None:
        """SIGKILL the filesystem: every change not yet fsync'd is gone, as from RAM."""
        if self.process:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.unmount()

    def unmount(self) -> None:
        # Unmounting ends the daemon's loop; a killed daemon leaves a dead mount
        # ("transport endpoint is not connected") that only a lazy unmount clears.
        if os.path.ismount(self.mountpoint) or _dead_mount(self.mountpoint):
            fusermount = shutil.which("fusermount3")
            command = [fusermount, "-u", "-z"] if fusermount else ["umount", "-l"]
            subprocess.run([*command, str(self.mountpoint)], check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if self.process and self.process.poll() is None:
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _dead_mount(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError as e:
        return e.errno == errno.ENOTCONN
    return False


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2])
