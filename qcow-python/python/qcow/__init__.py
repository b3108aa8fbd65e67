"""QEMU qcow (version 1) disk images from Python.

``qcow.open(path)`` returns a binary file object (an ``io.RawIOBase``) over the
image's guest content, with positional, thread-safe ``read_at``/``write_at``;
``qcow.create``, ``qcow.convert`` and ``qcow.check`` do what the ``qcow`` command's
verbs of those names do; ``qcow.pyqcow`` is a drop-in for libqcow's ``pyqcow``.
The work is done in Rust (qcow-std) with the GIL released, so threads read in
parallel.
"""

import io as _io
import os as _os

from . import _qcow
from ._qcow import Error, check, convert, create

__all__ = ["Error", "Image", "open", "create", "convert", "check"]
__version__ = _qcow.__version__

# Reader threads read ahead in the background: a fork must not catch one mid-read
# (the child would inherit the image's locks held).
if hasattr(_os, "register_at_fork"):
    _os.register_at_fork(before=_qcow.before_fork,
                         after_in_parent=_qcow.after_fork_in_parent)

# The most one call of read()/readinto() returns (a legal short read, as io allows):
# a hostile image claiming an enormous size cannot make one call allocate it.
MAX_READ = 256 << 20


class Image(_io.RawIOBase):
    """An opened image: a binary file object over its guest content.

    ``isinstance(img, io.RawIOBase)`` holds, so ``io.BufferedReader(img)`` works.
    Beyond the file methods: ``size``, ``read_at``, ``write_at``, ``info``, ``map``.
    """

    def __init__(self, handle, name=None):
        super().__init__()
        self._h = handle
        self._pos = 0
        self.name = name

    def _handle(self):
        if self._h is None:
            raise ValueError("I/O operation on closed file.")
        return self._h

    # -- the io.RawIOBase protocol ------------------------------------------------
    def readable(self):
        """True: images are always readable."""
        self._handle()
        return True

    def writable(self):
        """Whether the image was opened with mode ``"r+b"``."""
        return self._handle().writable

    def seekable(self):
        """True."""
        self._handle()
        return True

    @property
    def size(self):
        """The virtual (guest) size in bytes."""
        return self._handle().size

    def tell(self):
        """The current offset."""
        self._handle()
        return self._pos

    def seek(self, offset, whence=0):
        """Moves the offset (``whence``: 0 start, 1 current, 2 end); returns it."""
        h = self._handle()
        offset = _index(offset)
        if whence == 0:
            new = offset
        elif whence == 1:
            new = self._pos + offset
        elif whence == 2:
            new = h.size + offset
        else:
            raise ValueError("invalid whence (%r, should be 0, 1 or 2)" % (whence,))
        if new < 0:
            raise ValueError("negative seek position %d" % new)
        self._pos = new
        return new

    def read(self, size=-1):
        """Reads up to ``size`` bytes (all to the end when negative or None)."""
        h = self._handle()
        if size is None or size < 0:
            return self.readall()
        data = h.read_at(self._pos, min(_index(size), MAX_READ))
        self._pos += len(data)
        return data

    def readall(self):
        """Reads everything from the offset to the end."""
        h = self._handle()
        parts = []
        while True:
            data = h.read_at(self._pos, MAX_READ)
            if not data:
                break
            self._pos += len(data)
            parts.append(data)
        return b"".join(parts)

    def readinto(self, b):
        """Reads into a writable buffer; returns the byte count (0 at the end)."""
        h = self._handle()
        with memoryview(b) as view, view.cast("B") as m:
            data = h.read_at(self._pos, min(len(m), MAX_READ))
            n = len(data)
            m[:n] = data
        self._pos += n
        return n

    def write(self, b):
        """Writes ``b`` at the offset (mode ``"r+b"``); returns the byte count."""
        h = self._handle()
        if not h.writable:
            raise _io.UnsupportedOperation("not writable")
        with memoryview(b) as view:
            data = view.cast("B").tobytes()
        left = max(h.size - self._pos, 0)
        if not data:
            return 0
        if left == 0:
            raise Error("write past the virtual size (%d bytes)" % h.size)
        n = h.write_at(self._pos, data[:left])
        self._pos += n
        return n

    def flush(self):
        """Makes what was written durable."""
        h = self._handle()
        if h.writable:
            h.flush()

    def close(self):
        """Flushes and closes; later calls raise ``ValueError``. Idempotent."""
        if self._h is None:
            return
        try:
            super().close()
        finally:
            h, self._h = self._h, None
            h.close()

    @property
    def closed(self):
        """Whether ``close()`` was called."""
        return self._h is None

    def fileno(self):
        raise _io.UnsupportedOperation("an image has no file descriptor")

    def isatty(self):
        """False."""
        self._handle()
        return False

    # -- beyond io ----------------------------------------------------------------
    def read_at(self, offset, n):
        """Reads up to ``n`` bytes at ``offset`` without moving the offset (fewer at
        the end). Safe to call from several threads at once; the GIL is released
        while reading, inflating and decrypting."""
        offset, n = _index(offset), _index(n)
        if offset < 0 or n < 0:
            raise ValueError("negative offset or size")
        h = self._handle()
        if n > MAX_READ and min(n, h.size - offset) > MAX_READ:
            raise ValueError(
                "read_at of %d bytes exceeds the limit of one call (%d): read in chunks"
                % (n, MAX_READ))
        return h.read_at(offset, n)

    def write_at(self, offset, data):
        """Writes ``data`` at ``offset`` (inside the size) without moving the offset;
        returns the byte count. Needs mode ``"r+b"``."""
        offset = _index(offset)
        if offset < 0:
            raise ValueError("negative offset")
        h = self._handle()
        if not h.writable:
            raise _io.UnsupportedOperation("not writable")
        with memoryview(data) as view:
            return h.write_at(offset, view.cast("B").tobytes())

    def info(self):
        """The keys and values of ``qcow info --output=json``."""
        return self._handle().info()

    def map(self):
        """The extents of ``qcow map --output=json`` (a list of dicts)."""
        return self._handle().map()

    def __repr__(self):
        state = "closed" if self._h is None else "size=%d" % self._h.size
        return "<qcow.Image %r %s>" % (self.name, state)


def _index(v):
    import operator

    return operator.index(v)


def open(path, mode="rb", *, password=None, format=None):  # noqa: A001
    """Opens the image at ``path`` and returns a ``qcow.Image`` file object.

    ``mode`` is ``"rb"`` (read-only) or ``"r+b"`` (read-write); ``format`` is
    ``"qcow"``, ``"raw"`` or ``None`` (probed as the ``qcow`` command does);
    ``password`` (``bytes`` or ``str``) is the secret of the encrypted images in the
    chain. The backing chain is opened as the command opens it.

    Raises ``FileNotFoundError``/``PermissionError`` for the file, ``qcow.Error``
    (an ``OSError``) for a bad image or a missing password.

    >>> with qcow.open("disk.qcow") as img:
    ...     boot = img.read(512)
    """
    if mode not in ("rb", "r+b", "br", "rb+", "br+"):
        raise ValueError("mode must be 'rb' or 'r+b', not %r" % (mode,))
    import os

    path = os.fsdecode(path)  # str, bytes or os.PathLike, as open() takes
    h = _qcow.Handle.open(path, "+" in mode, password, format)
    if h.encrypted and password is None:
        h.close()
        raise Error("%s: the image is encrypted: a password is needed" % path)
    return Image(h, path)
