"""Whole-image reads in 1 MiB chunks: qcow (this package) and libqcow's pyqcow
alternately on the same images, in one run; prints medians and ratios.

usage: python read_bench.py ROUNDS IMAGE...   (run by `cargo xtask bench`)
"""

import statistics
import sys
import time
import zlib

import pyqcow

import qcow

CHUNK = 1 << 20


def read_ours(path, check=False):
    crc = 0
    with qcow.open(path) as img:
        for off in range(0, img.size, CHUNK):
            data = img.read_at(off, CHUNK)
            if check:
                crc = zlib.crc32(data, crc)
    return crc


def read_pyqcow(path, check=False):
    crc = 0
    f = pyqcow.open(path)
    size = f.get_media_size()
    for off in range(0, size, CHUNK):
        data = f.read_buffer_at_offset(min(CHUNK, size - off), off)
        if check:
            crc = zlib.crc32(data, crc)
    f.close()
    return crc


def timed(fn, path):
    t = time.perf_counter()
    fn(path)
    return time.perf_counter() - t


def main():
    rounds = int(sys.argv[1])
    print("| whole-image read, 1 MiB chunks (%d runs each) | pyqcow %s | qcow | ratio |"
          % (rounds, pyqcow.get_version()))
    print("| --- | --- | --- | --- |")
    for path in sys.argv[2:]:
        if read_pyqcow(path, True) != read_ours(path, True):
            sys.exit("%s: qcow and pyqcow read different data" % path)
        theirs, ours = [], []
        for _ in range(rounds):
            theirs.append(timed(read_pyqcow, path))
            ours.append(timed(read_ours, path))
        p, o = statistics.median(theirs), statistics.median(ours)
        print("| %s | %.3f s | %.3f s | %.2f× |" % (path.rsplit("/", 1)[-1], p, o, p / o))
    print("ratio = pyqcow's median time / qcow's (higher is better)")


if __name__ == "__main__":
    main()
