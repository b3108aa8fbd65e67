"""qcow.open, create, convert, check against qemu-img."""

import io
import os
import shutil
import threading
import time

import pytest

import qcow
from conftest import KINDS, PASSWORD, as_raw, qemu_img, qemu_json


@pytest.mark.parametrize("kind", KINDS)
def test_open_equals_qemu_img_convert(images, kind):
    path, pw, data = images[kind]
    with qcow.open(path, password=pw) as img:
        assert isinstance(img, io.RawIOBase)
        assert img.size == len(data)
        assert img.read() == data
        assert img.read(10) == b""
        img.seek(-1000, 2)
        assert img.read(5000) == data[-1000:]
        assert img.read_at(len(data) - 3, 100) == data[-3:]
        assert img.read_at(len(data) + 5, 100) == b""
        buf = bytearray(77777)
        img.seek(4242)
        assert img.readinto(buf) == len(buf)
        assert bytes(buf) == data[4242:4242 + len(buf)]


def test_chain_equals_qemu_img(chain):
    paths, expect = chain
    for p in paths:
        with qcow.open(p) as img:
            assert img.readall() == expect[p]


def test_buffered_reader(images):
    path, _, data = images["compressed"]
    with io.BufferedReader(qcow.open(path), buffer_size=1 << 20) as b:
        out = []
        while True:
            chunk = b.read(100003)
            if not chunk:
                break
            out.append(chunk)
        assert b"".join(out) == data
        b.seek(10)
        assert b.peek(1)[:1] == data[10:11]


def test_four_threads_agree_with_one(images):
    path, _, data = images["compressed"]
    with qcow.open(path) as img:
        single = [img.read_at(off, 65536) for off in range(0, img.size, 65536)]
        results = [None] * 4

        def work(i):
            offs = list(range(0, img.size, 65536))
            k = i * len(offs) // 4
            order = offs[k:] + offs[:k]  # each thread starts elsewhere
            got = {off: img.read_at(off, 65536) for off in order}
            results[i] = [got[off] for off in range(0, img.size, 65536)]

        ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        for r in results:
            assert r == single
        assert b"".join(single) == data


def test_info_and_map_as_qemu_img(images, chain):
    for p in [images["plain"][0], images["c65536"][0], chain[0][0]]:
        with qcow.open(p) as img:
            info = img.info()
            ref = qemu_json("info", "--output=json", p)
            for k in ("virtual-size", "cluster-size", "format", "encrypted",
                      "backing-filename", "dirty-flag"):
                if k in ref:
                    assert info.get(k) == ref[k], (p, k)
            ref_map = qemu_json("map", "--output=json", p)
            got = img.map()
            assert [(e["start"], e["length"], e["data"], e["zero"]) for e in got] == \
                [(e["start"], e["length"], e["data"], e["zero"]) for e in ref_map]


def test_write_then_qemu_reads_it(images, tmp_path):
    src, _, data = images["plain"]
    p = str(tmp_path / "w.qcow")
    shutil.copy(src, p)
    with qcow.open(p, "r+b") as img:
        assert img.writable()
        assert img.write_at(1000, b"hello") == 5
        img.seek(2 << 20)
        assert img.write(b"\xee" * 70000) == 70000
    want = bytearray(data)
    want[1000:1005] = b"hello"
    want[2 << 20:(2 << 20) + 70000] = b"\xee" * 70000
    assert as_raw(p, str(tmp_path)) == bytes(want)
    with qcow.open(p) as img:
        assert not img.writable()
        with pytest.raises(io.UnsupportedOperation):
            img.write(b"x")


def test_create_convert_check(images, tmp_path):
    p = str(tmp_path / "new.qcow")
    qcow.create(p, 5 << 20)
    ref = qemu_json("info", "--output=json", p)
    assert ref["format"] == "qcow" and ref["virtual-size"] == 5 << 20
    ov = str(tmp_path / "ov.qcow")
    qcow.create(ov, None, backing="new.qcow", backing_format="qcow")
    assert qemu_json("info", "--output=json", ov)["backing-filename"] == "new.qcow"
    src, _, data = images["plain"]
    calls = []
    out = str(tmp_path / "out.qcow")
    qcow.convert(src, out, output_format="qcow", compress=True,
                 progress=lambda d, t: calls.append((d, t)))
    assert calls and calls[-1][0] == calls[-1][1] == len(data)
    assert as_raw(out, str(tmp_path)) == data
    enc = str(tmp_path / "enc.qcow")
    qcow.convert(src, enc, output_format="qcow", target_password=PASSWORD)
    assert as_raw(enc, str(tmp_path), PASSWORD) == data
    rep = qcow.check(out)
    assert rep["corruptions"] == 0 and rep["leaks"] == 0 and rep["format"] == "qcow"
    assert qcow.check(out, repair="leaks")["leaks-fixed"] == 0
    raw = str(tmp_path / "out.raw")
    qcow.convert(enc, raw, password=PASSWORD)
    with open(raw, "rb") as f:
        assert f.read() == data


def test_errors(images, tmp_path):
    with pytest.raises(FileNotFoundError):
        qcow.open(str(tmp_path / "missing.qcow"))
    with pytest.raises(qcow.Error):
        qcow.open(images["encrypted"][0])
    with pytest.raises(ValueError):
        qcow.open(images["plain"][0], "w")
    bad = tmp_path / "bad.qcow"
    bad.write_bytes(b"QFI\xfb\0\0\0\x01" + b"\xff" * 100)
    with pytest.raises(qcow.Error) as e:
        qcow.open(str(bad))
    assert isinstance(e.value, OSError) and "bad.qcow" in str(e.value)
    q2 = str(tmp_path / "x.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", q2, "1M")
    with pytest.raises(qcow.Error):
        qcow.open(q2)
    with pytest.raises(qcow.Error):
        qcow.check(q2)
    with pytest.raises(ValueError):
        qcow.check(images["plain"][0], repair="bogus")


def test_closed_image(images):
    img = qcow.open(images["plain"][0])
    img.close()
    img.close()
    assert img.closed
    for op, args in [("read", (1,)), ("read_at", (0, 1)), ("seek", (0,)), ("tell", ()),
                     ("info", ()), ("map", ()), ("readinto", (bytearray(4),))]:
        with pytest.raises(ValueError):
            getattr(img, op)(*args)


def test_docs():
    assert "qcow.Image" in qcow.open.__doc__
    assert "threads" in qcow.Image.read_at.__doc__
    here = os.path.dirname(qcow.__file__)
    assert os.path.exists(os.path.join(here, "py.typed"))
    assert os.path.exists(os.path.join(here, "__init__.pyi"))


def test_large_reads_split_over_threads_equal_qemu(images):
    # Reads of 2 MiB and more are split between the caller and the reader pool;
    # odd offsets and lengths put part edges inside clusters and past the tail.
    for kind in ["plain", "compressed", "encrypted", "c512", "c65536"]:
        path, pw, data = images[kind]
        with qcow.open(path, password=pw) as img:
            for off, n in [(0, img.size), (1, img.size - 1), (12345, 2 << 20),
                           (img.size - (2 << 20) - 7, 3 << 20)]:
                assert img.read_at(off, n) == data[off:off + n], (kind, off, n)


def test_large_reads_from_many_threads_agree(images):
    path, _, data = images["compressed"]
    with qcow.open(path) as img:
        got = [None] * 6

        def work(i):
            got[i] = [img.read_at(i * 4096, img.size) for _ in range(5)]

        ts = [threading.Thread(target=work, args=(i,)) for i in range(6)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        for i, reads in enumerate(got):
            assert all(r == data[i * 4096:] for r in reads), i


def child_succeeds(pid, seconds, who):
    """Whether the forked child `pid` exits 0; fails the test if it hangs."""
    deadline = time.monotonic() + seconds
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("%s hung reading" % who)
        time.sleep(0.001)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_forked_child_reads_with_its_own_pool(images):
    # The parent's reader threads do not exist in a forked child (multiprocessing's
    # default on Linux): the child must make its own, not wait on the parent's.
    path, _, data = images["compressed"]
    img = qcow.open(path)
    assert img.read_at(0, img.size) == data  # the parent's pool exists now
    chunk = 256 << 10
    assert img.read_at(0, chunk) + img.read_at(chunk, chunk) == data[:2 * chunk]
    pid = os.fork()
    if pid == 0:
        ok = img.read_at(0, img.size) == data and qcow.open(path).read_at(1, 3 << 19) == data[1:1 + (3 << 19)]
        # The parent's parts read ahead (below) are never answered here: read alone.
        ok = ok and img.read_at(2 * chunk, chunk) == data[2 * chunk:3 * chunk]
        ok = ok and img.read_at(3 * chunk, chunk) == data[3 * chunk:4 * chunk]
        os._exit(0 if ok else 1)
    assert child_succeeds(pid, 60, "the forked child")
    img.close()


def test_a_huge_read_goes_window_by_window(tmp_path):
    # A read larger than the pool's windows (8 MiB a part): every window edge inside
    # the data, compressed clusters on both sides of each.
    import random
    from conftest import as_raw

    size = 40 << 20
    rnd = random.Random(7)
    data = bytearray(size)
    for at in range(0, size, 3 << 20):
        n = min(1 << 20, size - at)
        data[at:at + n] = bytes(rnd.getrandbits(8) for _ in range(4096)) * (n // 4096)
    src = tmp_path / "big.raw"
    src.write_bytes(bytes(data))
    img = tmp_path / "big.qcow"
    qemu_img("convert", "-c", "-O", "qcow", src, img)
    want = as_raw(str(img), str(tmp_path))
    assert want == bytes(data)
    with qcow.open(str(img)) as q:
        assert q.read_at(0, size) == want
        assert q.read_at(4095, size - 8191) == want[4095:size - 4096]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunk", [65536, 100003, 1 << 20])
def test_sequential_reads_ahead_equal_qemu(images, kind, chunk):
    # Reads in sequence are read ahead on the pool's threads; odd chunk lengths end
    # short at the tail, and a jump back starts a new sequence.
    path, pw, data = images[kind]
    with qcow.open(path, password=pw) as img:
        got = [img.read_at(off, chunk) for off in range(0, img.size, chunk)]
        assert b"".join(got) == data
        assert img.read_at(7, chunk) == data[7:7 + chunk]
        assert img.read_at(7 + chunk, chunk) == data[7 + chunk:7 + 2 * chunk]
        img.seek(0)
        assert b"".join(iter(lambda: img.read(chunk), b"")) == data


def test_writes_are_seen_by_reads_already_ahead(images, tmp_path):
    # Chunks 2 and 3 are being read ahead when the writes land: later reads of them
    # must show the written bytes, not the parts read before.
    src, _, data = images["compressed"]
    p = str(tmp_path / "ahead.qcow")
    shutil.copy(src, p)
    chunk = 256 << 10
    want = bytearray(data)
    with qcow.open(p, "r+b") as img:
        for round_ in range(3):
            assert img.read_at(0, chunk) == want[:chunk]
            assert img.read_at(chunk, chunk) == want[chunk:2 * chunk]
            new = bytes([0x41 + round_]) * 5000
            at = 2 * chunk + 1000 + round_ * 7000
            assert img.write_at(at, new) == len(new)
            want[at:at + len(new)] = new
            for off in range(2 * chunk, img.size, chunk):
                assert img.read_at(off, chunk) == want[off:off + chunk], (round_, off)
    assert as_raw(p, str(tmp_path)) == bytes(want)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_fork_right_after_reads_in_sequence_never_hangs(images):
    # Reads in sequence leave reader threads reading ahead; a fork that caught one
    # mid-read would hand the child the image's locks held (the module waits for
    # them before every fork). Many forks, each right after two reads.
    path, _, data = images["compressed"]
    chunk = 128 << 10
    with qcow.open(path) as img:
        for i in range(300):
            off = (i * chunk) % (img.size - 4 * chunk)
            assert img.read_at(off, chunk) + img.read_at(off + chunk, chunk) == \
                data[off:off + 2 * chunk]
            pid = os.fork()
            if pid == 0:
                ok = img.read_at(off + 2 * chunk, chunk) == data[off + 2 * chunk:off + 3 * chunk]
                os._exit(0 if ok else 1)
            assert child_succeeds(pid, 20, "fork %d: the child" % i), i


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_close_leaves_no_file_open_after_reads_ahead_were_dropped(images):
    # Reads in sequence start reads ahead; a jump elsewhere (or a write) drops them
    # while workers may still hold the image: close() waits for those too.
    path, _, data = images["compressed"]
    real = os.path.realpath(path)

    def open_fds():
        out = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                if os.readlink("/proc/self/fd/" + fd) == real:
                    out.append(fd)
            except OSError:
                pass
        return out

    chunk = 256 << 10
    for _ in range(20):
        img = qcow.open(path)
        assert img.read_at(0, chunk) + img.read_at(chunk, chunk) == data[:2 * chunk]
        assert img.read_at(7, chunk) == data[7:7 + chunk]  # elsewhere: parts dropped
        img.close()
        assert open_fds() == []
