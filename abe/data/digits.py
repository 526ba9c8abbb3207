"""The offline real dataset: scikit-learn's bundled handwritten digits (1,797 real 8 x 8 scans of
the digits 0-9, from the UCI "Optical Recognition of Handwritten Digits" set), written out as a
folder per class so they go through exactly the pipeline the benchmark datasets go through.
Zero-shot split as for CUB/CARS: digits 0-4 train, 5-9 test.
"""
from pathlib import Path

import cv2
import numpy as np
from sklearn.datasets import load_digits


def export_digits(root):
    """Write ``root/<digit>/<index>.png`` (8-bit grayscale, ink dark on white) unless present."""
    root = Path(root)
    digits = load_digits()
    expected = len(digits.target)
    if len(list(root.glob("*/*.png"))) == expected:
        return root
    for index, (scan, digit) in enumerate(zip(digits.images, digits.target)):
        gray = scan_to_gray(scan)
        folder = root / str(digit)
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{index:04d}.png"), gray)
    return root


TEST_DIGITS = (5, 6, 7, 8, 9)


def scan_to_gray(scan):
    """17 ink levels (0-16) to 0-255, inverted: dark ink on a light page, like a scan."""
    return (255 - np.rint(scan * 255 / 16)).astype(np.uint8)


def network_inputs(count, crop, mean=(104, 117, 123)):
    """The first ``count`` test-split digits as network inputs (N x 3 x crop x crop, and their
    labels), prepared as the demo prepares them: squared to ``crop * 5/4`` (the demo's 40 for
    32), JPEG-encoded as in its LMDB, centre-cropped, minus the mean. No files are written."""
    from abe.data.imaging import decode_jpeg, encode_jpeg, resize_and_pad
    from abe.data.prepare import DEFAULT_QUALITY
    from abe.data.pair_layer import crop_into

    digits = load_digits()
    chosen = np.flatnonzero(np.isin(digits.target, TEST_DIGITS))[:count]
    size = crop + crop // 4
    images = np.empty((len(chosen), 3, crop, crop), np.float32)
    offset = (size - crop) // 2
    for out, index in zip(images, chosen):
        gray = scan_to_gray(digits.images[index])
        square = resize_and_pad(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), size)
        image = decode_jpeg(encode_jpeg(square, DEFAULT_QUALITY))
        crop_into(out, image, offset, offset, False, np.asarray(mean, np.float32).reshape(3, 1, 1))
    return images, digits.target[chosen]
