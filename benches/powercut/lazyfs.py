#!/usr/bin/python3
"""A file system that loses what was not synced, for power-cut tests.

    lazyfs.py BACKING MOUNTPOINT

Mounts MOUNTPOINT (FUSE, in the foreground) as a view of the directory BACKING. Reads and
writes behave as usual, but written data and size changes stay in this process's memory
until the file is synced (fsync or fdatasync); only then do they reach BACKING. Killing
this process is a power cut: everything written and not synced is gone, as from a disk's
volatile cache. Creating, renaming and deleting files and directories go to BACKING at once
(as if their directory were synced), which favours the program under test: only file
contents are at stake.
"""

import errno
import os
import sys
import threading

try:
    from fuse import FUSE, FuseOSError, Operations
except ImportError:  # Debian's python3-fusepy names the module fusepy
    from fusepy import FUSE, FuseOSError, Operations

PAGE = 4096


class Pending:
    """Unsynced state of one file: dirty pages and the size it has to readers."""

    def __init__(self, size):
        self.size = size
        self.pages = {}


class LazyFS(Operations):
    def __init__(self, root):
        self.root = os.path.realpath(root)
        self.mutex = threading.Lock()
        self.pending = {}

    def _full(self, path):
        return os.path.join(self.root, path.lstrip("/"))

    def _state(self, path):
        state = self.pending.get(path)
        if state is None:
            state = Pending(os.path.getsize(self._full(path)))
            self.pending[path] = state
        return state

    def _backing_page(self, path, index):
        with open(self._full(path), "rb") as f:
            f.seek(index * PAGE)
            data = f.read(PAGE)
        return bytearray(data.ljust(PAGE, b"\0"))

    # ---- metadata ----------------------------------------------------------------------

    def getattr(self, path, fh=None):
        st = os.lstat(self._full(path))
        attrs = {
            key: getattr(st, key)
            for key in ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime",
                        "st_nlink", "st_size", "st_uid", "st_ino")
        }
        with self.mutex:
            state = self.pending.get(path)
            if state is not None:
                attrs["st_size"] = state.size
        return attrs

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self._full(path))

    def access(self, path, mode):
        if not os.access(self._full(path), mode):
            raise FuseOSError(errno.EACCES)

    def chmod(self, path, mode):
        os.chmod(self._full(path), mode)

    def chown(self, path, uid, gid):
        os.chown(self._full(path), uid, gid)

    def utimens(self, path, times=None):
        os.utime(self._full(path), times)

    def statfs(self, path):
        st = os.statvfs(self._full(path))
        return {
            key: getattr(st, key)
            for key in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail",
                        "f_ffree", "f_files", "f_flag", "f_frsize", "f_namemax")
        }

    def mkdir(self, path, mode):
        os.mkdir(self._full(path), mode)

    def rmdir(self, path):
        os.rmdir(self._full(path))

    def unlink(self, path):
        with self.mutex:
            self.pending.pop(path, None)
        os.unlink(self._full(path))

    def rename(self, old, new):
        with self.mutex:
            # Unsynced contents go with the file.
            state = self.pending.pop(old, None)
            self.pending.pop(new, None)
            if state is not None:
                self.pending[new] = state
        os.rename(self._full(old), self._full(new))

    # ---- contents ----------------------------------------------------------------------

    def create(self, path, mode, fi=None):
        fd = os.open(self._full(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        os.close(fd)
        return 0

    def open(self, path, flags):
        if flags & os.O_TRUNC:
            self.truncate(path, 0)
        return 0

    def read(self, path, size, offset, fh):
        with self.mutex:
            state = self.pending.get(path)
            if state is None:
                with open(self._full(path), "rb") as f:
                    f.seek(offset)
                    return f.read(size)
            end = min(offset + size, state.size)
            if end <= offset:
                return b""
            with open(self._full(path), "rb") as f:
                f.seek(offset)
                out = bytearray(f.read(end - offset).ljust(end - offset, b"\0"))
            first, last = offset // PAGE, (end - 1) // PAGE
            for index in range(first, last + 1):
                page = state.pages.get(index)
                if page is None:
                    continue
                lo = max(offset, index * PAGE)
                hi = min(end, (index + 1) * PAGE)
                out[lo - offset:hi - offset] = page[lo - index * PAGE:hi - index * PAGE]
            return bytes(out)

    def write(self, path, data, offset, fh):
        with self.mutex:
            state = self._state(path)
            pos = 0
            while pos < len(data):
                at = offset + pos
                index, within = divmod(at, PAGE)
                page = state.pages.get(index)
                if page is None:
                    page = self._backing_page(path, index) if index * PAGE < state.size else bytearray(PAGE)
                    # Bytes past the size readers see are zeros, whatever the backing holds.
                    if (index + 1) * PAGE > state.size:
                        keep = max(0, state.size - index * PAGE)
                        page[keep:] = bytes(PAGE - keep)
                    state.pages[index] = page
                n = min(PAGE - within, len(data) - pos)
                page[within:within + n] = data[pos:pos + n]
                pos += n
            state.size = max(state.size, offset + len(data))
            return len(data)

    def truncate(self, path, length, fh=None):
        with self.mutex:
            state = self._state(path)
            for index in [i for i in state.pages if i * PAGE >= length]:
                del state.pages[index]
            last = length // PAGE
            if last in state.pages:
                page = state.pages[last]
                page[length - last * PAGE:] = bytes(PAGE - (length - last * PAGE))
            elif length < state.size and length % PAGE:
                page = self._backing_page(path, last)
                page[length - last * PAGE:] = bytes(PAGE - (length - last * PAGE))
                state.pages[last] = page
            state.size = length

    def fsync(self, path, datasync, fh):
        with self.mutex:
            state = self.pending.pop(path, None)
            if state is None:
                return 0
            fd = os.open(self._full(path), os.O_WRONLY)
            try:
                os.ftruncate(fd, state.size)
                for index, page in sorted(state.pages.items()):
                    start = index * PAGE
                    if start < state.size:
                        os.pwrite(fd, bytes(page[:state.size - start]), start)
                os.fsync(fd)
            finally:
                os.close(fd)
        return 0

    def fsyncdir(self, path, datasync, fh):
        return 0

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    FUSE(LazyFS(sys.argv[1]), sys.argv[2], foreground=True, nothreads=True,
         allow_other=False, default_permissions=False)
