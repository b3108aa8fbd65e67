"""Images made by qemu-img (and QEMU writing into images of every cluster size), shared
by the tests. A missing tool or pyqcow FAILS the tests that need it, with a message."""

import json
import os
import random
import shutil
import subprocess

import pytest

SIZE = 3 << 20  # 3 MiB guests (odd tails and partial L2 tables included)
PASSWORD = "s3cret pw"


def tool(name):
    path = shutil.which(name)
    if path is None:
        pytest.fail("%s not found: install qemu-utils (QEMU 10)" % name)
    return path


def qemu_img(*args):
    out = subprocess.run([tool("qemu-img")] + [str(a) for a in args],
                         capture_output=True, text=True)
    # qemu-img 10.0's `convert -c -O qcow` exits 1 silently though its output is
    # complete (the fixtures compare every image's content with the source).
    silent = out.returncode == 1 and "-c" in args and "qemu-img:" not in out.stderr
    if out.returncode != 0 and not silent:
        pytest.fail("qemu-img %s failed: %s" % (" ".join(map(str, args)), out.stderr))
    return out.stdout


def pyqcow_module():
    try:
        import pyqcow
    except ImportError:
        pytest.fail("pyqcow not importable: install Debian's python3-libqcow and use a "
                    "venv made with --system-site-packages (cargo xtask python-test does)")
    return pyqcow


def raw_data(seed, size=SIZE):
    """Random data with zero runs and repeated runs (compressible)."""
    rnd = random.Random(seed)
    out = bytearray(size)
    at = 0
    while at < size:
        n = min(rnd.choice([512, 4096, 65536, 100000, 300000]), size - at)
        kind = rnd.random()
        if kind < 0.3:
            pass  # zeros
        elif kind < 0.6:
            out[at:at + n] = bytes([rnd.randrange(256)]) * n
        else:
            out[at:at + n] = rnd.randbytes(n) if hasattr(rnd, "randbytes") else \
                bytes(rnd.getrandbits(8) for _ in range(n))
        at += n
    return bytes(out)


def secret_args(fmt_key="encrypt"):
    return ["--object", "secret,id=sec0,data=%s" % PASSWORD]


def as_raw(path, tmp, password=None):
    """`qemu-img convert -O raw` of an image: its guest content."""
    out = os.path.join(tmp, os.path.basename(path) + ".ref.raw")
    if password is None:
        qemu_img("convert", "-O", "raw", path, out)
    else:
        qemu_img("convert", "--object", "secret,id=sec0,data=%s" % password,
                 "--image-opts", "driver=qcow,file.filename=%s,encrypt.key-secret=sec0" % path,
                 "-O", "raw", out)
    with open(out, "rb") as f:
        return f.read()


KINDS = ["plain", "compressed", "encrypted"] + ["c%d" % (1 << b) for b in range(9, 17)]


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    """kind -> (path, password or None, expected guest bytes)."""
    import qcow

    tmp = str(tmp_path_factory.mktemp("images"))
    src = os.path.join(tmp, "src.raw")
    data = raw_data(1)
    with open(src, "wb") as f:
        f.write(data)
    out = {}
    p = os.path.join(tmp, "plain.qcow")
    qemu_img("convert", "-O", "qcow", src, p)
    out["plain"] = (p, None)
    p = os.path.join(tmp, "compressed.qcow")
    qemu_img("convert", "-c", "-O", "qcow", src, p)
    out["compressed"] = (p, None)
    p = os.path.join(tmp, "encrypted.qcow")
    qemu_img("convert", "--object", "secret,id=sec0,data=%s" % PASSWORD, "-O", "qcow",
             "-o", "encrypt.format=aes,encrypt.key-secret=sec0", src, p)
    out["encrypted"] = (p, PASSWORD)
    for bits in range(9, 17):
        p = os.path.join(tmp, "c%d.qcow" % (1 << bits))
        qcow.create(p, SIZE, cluster_bits=bits)
        qemu_img("convert", "-n", "-O", "qcow", src, p)  # QEMU writes the data
        out["c%d" % (1 << bits)] = (p, None)
    res = {}
    for k, (p, pw) in out.items():
        got = as_raw(p, tmp, pw)
        assert got == data, "qemu-img reads %s back differently" % k
        res[k] = (p, pw, got)
    return res


@pytest.fixture(scope="session")
def chain(tmp_path_factory):
    """A qcow base and two qcow overlays (relative backing names), each written by
    qemu-io; returns (paths top first, expected guest bytes of each)."""
    tmp = str(tmp_path_factory.mktemp("chain"))
    base = os.path.join(tmp, "base.qcow")
    mid = os.path.join(tmp, "mid.qcow")
    top = os.path.join(tmp, "top.qcow")
    src = os.path.join(tmp, "base.raw")
    with open(src, "wb") as f:
        f.write(raw_data(2))
    qemu_img("convert", "-O", "qcow", src, base)
    qemu_img("create", "-q", "-f", "qcow", "-b", "base.qcow", "-F", "qcow", mid)
    qemu_img("create", "-q", "-f", "qcow", "-b", "mid.qcow", "-F", "qcow", top)
    io_ = tool("qemu-io")
    for path, pat, at in [(mid, 0x5A, 300000), (top, 0xA5, 700000), (top, 0x11, 2000000)]:
        subprocess.run([io_, "-f", "qcow", "-c", "write -P %d %d 70000" % (pat, at), path],
                       check=True, capture_output=True)
    expect = {p: as_raw(p, tmp) for p in (base, mid, top)}
    return [top, mid, base], expect


def qemu_json(*args):
    return json.loads(qemu_img(*args))
