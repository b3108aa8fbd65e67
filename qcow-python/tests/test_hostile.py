"""Hostile inputs: the interpreter survives and an exception is raised."""

import io
import os
import random
import struct

import pytest

import qcow
import qcow.pyqcow as ours


class Source:
    """A file object over bytes that misbehaves as told."""

    def __init__(self, data, mode="ok", lie=0):
        self.f = io.BytesIO(data)
        self.mode = mode
        self.lie = lie
        self.calls = 0

    def seek(self, off, whence=0):
        r = self.f.seek(off, whence)
        return r + self.lie if whence == 2 else r

    def tell(self):
        return self.f.tell()

    def read(self, n=-1):
        self.calls += 1
        if self.mode == "raise" and self.calls > 3:
            raise RuntimeError("disk on fire")
        if self.mode == "short":
            return self.f.read(max(n // 2, 1))
        if self.mode == "none" and self.calls > 3:
            return None
        if self.mode == "more" and self.calls > 3:
            return self.f.read(n) + b"extra"
        if self.mode == "str" and self.calls > 3:
            return "text"
        return self.f.read(n)


def file_data(path):
    with open(path, "rb") as f:
        return f.read()


def test_short_reads_still_read_right(images):
    path, _, data = images["compressed"]
    f = ours.open_file_object(Source(file_data(path), "short"))
    assert f.read_buffer() == data


@pytest.mark.parametrize("mode", ["raise", "none", "more", "str"])
def test_misbehaving_file_object_raises(images, mode):
    path, _, _ = images["plain"]
    src = Source(file_data(path), mode)
    with pytest.raises(OSError) as e:
        f = ours.open_file_object(src)
        f.read_buffer()
    if mode == "raise":
        assert "disk on fire" in str(e.value)


def test_file_object_that_lies_about_its_size(images):
    path, _, data = images["plain"]
    # Claims to be larger: reads still come from real data, and past it they fail.
    f = ours.open_file_object(Source(file_data(path), lie=1 << 40))
    assert f.read_buffer() == data
    # A truncated image (its file object ends early) raises, never crashes.
    cut = file_data(path)[: len(file_data(path)) // 2]
    f = ours.open_file_object(Source(cut, lie=1 << 20))
    with pytest.raises(OSError):
        f.read_buffer()


def test_missing_methods():
    with pytest.raises(TypeError):
        ours.open_file_object(object())


def test_huge_reads(images):
    path, _, data = images["plain"]
    with qcow.open(path) as img:
        assert img.read(2**62) == data
        assert img.read_at(0, 2**62) == data
        img.seek(2**62)
        assert img.read(10) == b""
        with pytest.raises((ValueError, OverflowError)):
            img.read_at(-1, 1)
        with pytest.raises(OverflowError):
            img.read_at(2**64, 1)


def test_image_claiming_an_enormous_size(tmp_path):
    p = str(tmp_path / "huge.qcow")
    qcow.create(p, 1 << 40)
    with qcow.open(p) as img:
        assert img.size == 1 << 40
        assert img.read(1 << 20) == b"\0" * (1 << 20)
        with pytest.raises(ValueError):
            img.read_at(0, 1 << 39)
    f = ours.open(p)
    with pytest.raises(ValueError):
        f.read_buffer()


def test_mutated_images_never_crash(images, tmp_path):
    rnd = random.Random(7)
    base = bytearray(file_data(images["plain"][0]))
    raised = 0
    for i in range(150):
        m = bytearray(base)
        for _ in range(rnd.randrange(1, 6)):
            at = rnd.choice([rnd.randrange(48), rnd.randrange(len(m))])
            m[at] = rnd.randrange(256)
        if i % 10 == 0:
            m = m[: rnd.randrange(len(m))]
        p = str(tmp_path / ("m%d.qcow" % i))
        with open(p, "wb") as f:
            f.write(m)
        try:
            with qcow.open(p) as img:
                n = min(img.size, 1 << 20)
                img.read_at(0, n)
                img.read_at(max(img.size - n, 0), n)
                img.map() if img.size < (1 << 32) else None
        except OSError:
            raised += 1
        try:
            f = ours.open_file_object(Source(bytes(m)))
            f.read_buffer(min(f.get_media_size(), 1 << 20))
        except (OSError, ValueError):
            raised += 1
    assert raised > 0


def test_header_fields(tmp_path):
    # Each header field set to hostile values: open or read raises qcow.Error.
    p = str(tmp_path / "h.qcow")
    qcow.create(p, 1 << 20)
    good = bytearray(file_data(p))
    for off, fmt, val in [(4, ">I", 2), (24, ">Q", 2**63), (32, ">B", 0), (32, ">B", 63),
                          (33, ">B", 40), (40, ">Q", 2**62), (8, ">Q", 2**62),
                          (16, ">I", 0xFFFFFFFF), (36, ">I", 7)]:
        m = bytearray(good)
        struct.pack_into(fmt, m, off, val)
        with open(p, "wb") as f:
            f.write(m)
        try:
            with qcow.open(p) as img:
                img.read_at(0, 4096)
        except OSError as e:
            assert str(e)


def test_interpreter_survives_threads_and_close(images):
    import threading

    path, _, data = images["compressed"]
    img = qcow.open(path)
    errors = []

    def work():
        try:
            for off in range(0, img.size, 65536):
                img.read_at(off, 65536)
        except ValueError:
            errors.append("closed")

    ts = [threading.Thread(target=work) for _ in range(4)]
    for t in ts:
        t.start()
    img.close()
    for t in ts:
        t.join()
    assert img.closed
    assert os.path.exists(path)


def test_a_fifo_is_refused_not_waited_on(tmp_path):
    # Opening a FIFO waits for a writer forever; it is refused at once instead.
    fifo = str(tmp_path / "image.fifo")
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="FIFO or socket is not a disk image"):
        qcow.open(fifo)
    f = ours.file()
    with pytest.raises(OSError):
        f.open(fifo)


def test_bytes_and_pathlike_paths(images):
    import pathlib

    path, _, data = images["plain"]
    for p in [path, path.encode(), pathlib.Path(path)]:
        with qcow.open(p) as img:
            assert img.read_at(0, 4096) == data[:4096]
        f = ours.file()
        f.open(p)
        assert f.read_buffer_at_offset(4096, 0) == data[:4096]
        f.close()
        assert ours.check_file_signature(p)


def test_signature_of_a_fifo_is_false_not_a_hang(tmp_path):
    fifo = str(tmp_path / "sig.fifo")
    os.mkfifo(fifo)
    assert ours.check_file_signature(fifo) is False


def test_reads_ahead_of_damage_fail_as_reads_without(images, tmp_path):
    # A truncated image: chunks past the cut fail. Read in sequence (the reader pool
    # reads ahead, and its failures are not kept), each chunk fails or reads exactly
    # as the same read on a fresh handle (no read-ahead) does.
    src = file_data(images["compressed"][0])
    chunk = 64 << 10
    for cut in [len(src) // 3, len(src) // 2, len(src) - 5000]:
        p = str(tmp_path / ("cut%d.qcow" % cut))
        with open(p, "wb") as f:
            f.write(src[:cut])

        def outcome(img, off):
            try:
                return img.read_at(off, chunk)
            except OSError as e:
                return type(e)

        with qcow.open(p) as img:
            seq = [outcome(img, off) for off in range(0, img.size, chunk)]
        alone = []
        for off in range(0, len(seq) * chunk, chunk):
            with qcow.open(p) as img:
                alone.append(outcome(img, off))
        assert seq == alone, cut
        assert any(not isinstance(x, bytes) for x in seq), cut
