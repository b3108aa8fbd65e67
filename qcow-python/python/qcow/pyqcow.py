"""A drop-in for libqcow's ``pyqcow``: ``import qcow.pyqcow as pyqcow``.

Same module functions, ``file`` class, methods and offsets as pyqcow. As in pyqcow,
a ``file`` does not open its backing file by itself: the caller supplies it with
``set_parent`` (dfvfs does). Unlike pyqcow 20201213, a qcow (version 1) parent set
with ``set_parent`` is read correctly (QEMU's reading, not pyqcow's).
"""

import os as _os

from . import _qcow

__all__ = [
    "get_version",
    "check_file_signature",
    "check_file_signature_file_object",
    "open",
    "open_file_object",
    "file",
    "encryption_types",
]

_INT_MAX = 2**31 - 1
_SIGNATURE = b"QFI\xfb"


class ClosedError(OSError, ValueError):
    """A ``file`` used when not open: an ``OSError`` as pyqcow raises, and a
    ``ValueError`` as Python's io raises."""


class encryption_types(object):  # noqa: N801 (pyqcow's name)
    """The encryption methods (``file.get_encryption_method()``)."""

    NONE = 0
    AES_128_CBC = 1


def get_version():
    """get_version() -> Unicode string

    The version of the library (this package's, not libqcow's)."""
    return _qcow.__version__


def check_file_signature(filename):
    """check_file_signature(filename) -> Boolean

    Checks if a file has a QEMU Copy-On-Write (QCOW) image file signature."""
    # O_NONBLOCK: a FIFO (no writer) reads as empty instead of blocking the open.
    fd = _os.open(_os.fsdecode(filename), _os.O_RDONLY | _os.O_NONBLOCK)
    with _os.fdopen(fd, "rb") as f:
        try:
            return f.read(4) == _SIGNATURE
        except BlockingIOError:
            return False


def check_file_signature_file_object(file_object):
    """check_file_signature_file_object(file_object) -> Boolean

    Checks if a file has a QCOW image file signature using a file-like object."""
    file_object.seek(0, 0)
    data = file_object.read(4)
    return isinstance(data, (bytes, bytearray)) and bytes(data) == _SIGNATURE


def open(filename, mode="r"):  # noqa: A001 (pyqcow's name)
    """open(filename, mode='r') -> Object

    Opens a file."""
    f = file()
    f.open(filename, mode)
    return f


def open_file_object(file_object, mode="r"):
    """open_file_object(file_object, mode='r') -> Object

    Opens a file using a file-like object."""
    f = file()
    f.open_file_object(file_object, mode)
    return f


def _mode(mode, fn):
    if mode is None:
        mode = "r"
    if not isinstance(mode, str) or mode[:1] != "r" or mode not in ("r", "rb"):
        raise ValueError("pyqcow_file_%s: unsupported mode: %s." % (fn, mode))


def _int(v, what, fn):
    import operator

    try:
        return operator.index(v)
    except TypeError:
        raise TypeError("pyqcow_file_%s: unsupported %s type." % (fn, what)) from None


class file(object):  # noqa: N801 (pyqcow's name)
    """pyqcow file object (wraps libqcow_file_t)"""

    def __init__(self):
        self._h = None
        self._offset = 0
        self._password = None

    def _handle(self, fn):
        if self._h is None:
            raise ClosedError("pyqcow_file_%s: invalid file - not open." % fn)
        return self._h

    def open(self, filename, mode="r"):
        """open(filename, mode='r') -> None

        Opens a file."""
        _mode(mode, "open")
        if self._h is not None:
            raise OSError("pyqcow_file_open: unable to open file: already open.")
        path = _os.fsdecode(filename)
        self._h = _qcow.Handle.open(path, False, self._password, "qcow", False)
        self._offset = 0

    def open_file_object(self, file_object, mode="r"):
        """open_file_object(file_object, mode='r') -> None

        Opens a file using a file-like object."""
        _mode(mode, "open_file_object")
        for m in ("read", "seek", "tell"):
            if not callable(getattr(file_object, m, None)):
                raise TypeError(
                    "pyqcow_file_open_file_object: unsupported file object - missing %s."
                    % m)
        if self._h is not None:
            raise OSError("pyqcow_file_open_file_object: unable to open file: already open.")
        name = getattr(file_object, "name", None)
        name = name if isinstance(name, str) else None
        self._h = _qcow.Handle.open_file_object(file_object, self._password, "qcow", name)
        self._offset = 0

    def close(self):
        """close() -> None

        Closes a file."""
        h = self._handle("close")
        self._h = None
        h.close()

    def signal_abort(self):
        """signal_abort() -> None

        Signals the file to abort the current activity (reads are not interruptible:
        a no-op)."""

    def _read(self, size, offset, fn):
        h = self._handle(fn)
        if size < 0:
            raise ValueError("pyqcow_file_%s: invalid read size value less than zero." % fn)
        if size > _INT_MAX:
            raise ValueError(
                "pyqcow_file_%s: invalid argument read size value exceeds maximum." % fn)
        if size == 0:
            return b""
        data = h.read_at(offset, size)
        self._offset = offset + len(data)
        return data

    def read_buffer(self, size=None):
        """read_buffer(size) -> Binary string

        Reads a buffer of data."""
        h = self._handle("read_buffer")
        if size is None:
            size = max(h.size - self._offset, 0)
        size = _int(size, "size", "read_buffer")
        return self._read(size, self._offset, "read_buffer")

    read = read_buffer

    def read_buffer_at_offset(self, size, offset):
        """read_buffer_at_offset(size, offset) -> Binary string

        Reads a buffer of data at a specific offset."""
        self._handle("read_buffer_at_offset")
        size = _int(size, "size", "read_buffer_at_offset")
        offset = _int(offset, "offset", "read_buffer_at_offset")
        if offset < 0:
            raise ValueError(
                "pyqcow_file_read_buffer_at_offset: invalid read offset value less than zero.")
        return self._read(size, offset, "read_buffer_at_offset")

    def seek_offset(self, offset, whence=0):
        """seek_offset(offset, whence) -> None

        Seeks an offset within the data."""
        h = self._handle("seek_offset")
        offset = _int(offset, "offset", "seek_offset")
        if whence == 0:
            new = offset
        elif whence == 1:
            new = self._offset + offset
        elif whence == 2:
            new = h.size + offset
        else:
            raise OSError("pyqcow_file_seek_offset: unable to seek offset: invalid whence.")
        if new < 0:
            raise OSError(
                "pyqcow_file_seek_offset: unable to seek offset: invalid offset value "
                "out of bounds.")
        self._offset = new

    seek = seek_offset

    def get_offset(self):
        """get_offset() -> Integer

        Retrieves the current offset within the data."""
        self._handle("get_offset")
        return self._offset

    tell = get_offset

    def get_media_size(self):
        """get_media_size() -> Integer

        Retrieves the size of the media data."""
        return self._handle("get_media_size").size

    media_size = property(get_media_size)

    def get_backing_filename(self):
        """get_backing_filename() -> Unicode string or None

        Retrieves the backing filename."""
        name = self._handle("get_backing_filename").backing_name
        return None if name is None else name.decode("utf-8", "replace")

    backing_filename = property(get_backing_filename)

    def get_encryption_method(self):
        """get_encryption_method() -> Integer

        Retrieves the encryption method (see ``encryption_types``)."""
        h = self._handle("get_encryption_method")
        return encryption_types.AES_128_CBC if h.encrypted else encryption_types.NONE

    encryption_method = property(get_encryption_method)

    def is_locked(self):
        """is_locked() -> Boolean

        Determines if the file is locked (encrypted, with no password set)."""
        h = self._handle("is_locked")
        return bool(h.encrypted and self._password is None)

    def set_password(self, password):
        """set_password(password) -> None

        Sets the password (before or after open)."""
        if not isinstance(password, (str, bytes)):
            raise TypeError("pyqcow_file_set_password: unsupported password type.")
        self._password = password
        if self._h is not None:
            self._h = self._h.with_password(password)

    def set_parent(self, parent_file):
        """set_parent(parent_file) -> None

        Sets the parent file (the backing layer, an opened ``file``)."""
        h = self._handle("set_parent")
        if not isinstance(parent_file, file):
            raise TypeError("pyqcow_file_set_parent: unsupported parent file object.")
        self._h = h.with_parent(parent_file._handle("set_parent"))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._h is not None:
            self.close()
        return False
