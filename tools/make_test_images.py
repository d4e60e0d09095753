#!/usr/bin/env python3
"""Writes the small test images under tests/fixtures/images/ (pure Python: zlib + struct, no PIL).

Deterministic: gradients, a checkerboard with sharp edges and pseudo-random noise, so that the bicubic
resize of the CLIP preprocessing is exercised both when downscaling (antialiased) and upscaling.
"""
import os
import struct
import sys
import zlib


def png(path, width, height, channels, pixel):
    color_type = {1: 0, 3: 2, 4: 6}[channels]
    raw = bytearray()
    for y in range(height):
        raw.append(0)  # filter: none
        for x in range(width):
            raw.extend(pixel(x, y))

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(raw), 9)) +
                chunk(b"IEND", b""))


class Lcg:
    def __init__(self, seed):
        self.state = seed

    def next(self):
        self.state = (self.state * 1103515245 + 12345) & 0x7FFFFFFF
        return self.state >> 16


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures",
                                                              "images")
    os.makedirs(out, exist_ok=True)
    rng = Lcg(7)
    noise = [[rng.next() % 41 - 20 for _ in range(96)] for _ in range(96)]

    def clamp(v):
        return max(0, min(255, int(v)))

    def rgb(x, y, w, h):
        checker = 60 if ((x // 7) + (y // 5)) % 2 else 0
        r = clamp(255 * x / (w - 1) * 0.8 + checker + noise[y][x])
        g = clamp(255 * y / (h - 1) * 0.7 + (80 if (x - w / 2) ** 2 + (y - h / 2) ** 2 < (h / 3) ** 2 else 0))
        b = clamp(128 + 100 * (((x * 3 + y * 5) % 23) / 22.0 - 0.5) + noise[x][y])
        return r, g, b

    png(os.path.join(out, "test.png"), 80, 60, 3, lambda x, y: rgb(x, y, 80, 60))
    png(os.path.join(out, "small.png"), 20, 26, 4, lambda x, y: rgb(x, y, 20, 26) + (clamp(40 + 8 * x),))
    png(os.path.join(out, "gray.png"), 50, 45, 1, lambda x, y: (clamp(2.5 * x + 2 * y + noise[y][x] * 2),))


if __name__ == "__main__":
    main()
