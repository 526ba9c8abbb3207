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
        # 17 ink levels (0-16) to 0-255, inverted: dark ink on a light page, like a scan.
        gray = (255 - np.rint(scan * 255 / 16)).astype(np.uint8)
        folder = root / str(digit)
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{index:04d}.png"), gray)
    return root
