"""Turning any image file into the paper's 3-channel BGR square: decode, resize keeping the
aspect ratio, pad.

Pillow decodes the original files because it raises on a truncated JPEG (OpenCV silently
returns a half-grey image) and knows every mode the datasets contain (grayscale, palette, CMYK,
16-bit, alpha). OpenCV resizes, and re-encodes the padded squares.
"""
import io
import struct
import warnings

import cv2
import numpy as np
from PIL import Image

from abe.data.files import NotReadable, read_regular_file

# Pad with the BGR channel mean that training subtracts (BVLC GoogLeNet's), so the padding is
# ~0 at the network input: it adds no edges or energy that the image did not have.
PAD_BGR = (104, 117, 123)
ENCODINGS = ("jpeg", "raw")  # datum payloads: JPEG bytes (decided, see the README) or pixels
DEFAULT_QUALITY = 95
# Per-image limits. Pixels: Pillow's own decompression-bomb threshold (~89.5 M pixels, 0.27 GB
# as RGB), enforced here whatever Pillow is set to. Bytes: a file is read whole, and a quarter
# of a GiB is far beyond a dataset photo.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS
MAX_FILE_BYTES = 256 << 20
# What Pillow's decoders raise on damaged input (its own fuzzing tests accept these).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error)


class BadImage(ValueError):
    """An image file that cannot be decoded (zero-byte, truncated, corrupt); one-line message."""


def read_image_file(path):
    """The bytes of the image file ``path`` (a regular file up to MAX_FILE_BYTES), or BadImage."""
    try:
        return read_regular_file(path, MAX_FILE_BYTES)
    except NotReadable as error:
        raise BadImage(str(error)) from None
    except OSError as error:
        raise BadImage(f"unreadable: {error.strerror or error}") from None
    except ValueError as error:  # an embedded NUL byte in the path
        raise BadImage(f"unreadable: {error}") from None


def decode_bgr(data, background=PAD_BGR):
    """Decode image bytes to an H x W x 3 uint8 BGR array; alpha is composited on ``background``.
    Images over MAX_PIXELS (decompression bombs) are refused before their pixels are decoded."""
    if not data:
        raise BadImage("zero-byte file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # per-file notes (EXIF, palettes) are not actionable
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise BadImage(f"too large: {_first_line(error)}") from None
        except DECODE_ERRORS as error:
            raise BadImage(f"corrupt: not a readable image ({type(error).__name__})") from None
        with image:
            if image.width * image.height > MAX_PIXELS:
                raise BadImage(f"too large: {image.width} x {image.height} pixels "
                               f"(limit {MAX_PIXELS:,}: a decompression bomb?)")
            try:
                image.load()  # decodes now, so a truncated file raises here
                return _to_bgr(image, background)
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
                raise BadImage(f"too large: {_first_line(error)}") from None
            except DECODE_ERRORS as error:
                raise BadImage(f"truncated or damaged: {_first_line(error)}") from None


def _first_line(error):
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _to_bgr(image, background):
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grayscale: keep the high byte
        gray = (np.asarray(image, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8)
        return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
        alpha = rgba[..., 3:] / 255.0
        rgb = rgba[..., :3] * alpha + np.asarray(background[::-1], np.float32) * (1 - alpha)
        return np.ascontiguousarray(np.rint(rgb).astype(np.uint8)[..., ::-1])
    return np.ascontiguousarray(np.asarray(image.convert("RGB"))[..., ::-1])


def crop_box(image, box):
    """Crop to ``box`` = (x0, y0, x1, y1), pixel edges, clipped to the image; empty -> unchanged."""
    height, width = image.shape[:2]
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, width), min(y1, height)
    if x1 <= x0 or y1 <= y0:
        return image
    return image[y0:y1, x0:x1]


def resize_and_pad(image, size=256, pad=PAD_BGR):
    """Scale the longer side to ``size`` keeping the aspect ratio, centre on a ``pad`` square."""
    height, width = image.shape[:2]
    scale = size / max(height, width)
    new_w = min(size, max(1, int(round(width * scale))))
    new_h = min(size, max(1, int(round(height * scale))))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    square = np.empty((size, size, 3), np.uint8)
    square[:] = pad
    top, left = (size - new_h) // 2, (size - new_w) // 2
    square[top:top + new_h, left:left + new_w] = resized
    return square


def encode_jpeg(image, quality):
    """JPEG bytes without chroma subsampling (4:4:4): colour edges stay where they are, for
    ~30% more bytes than OpenCV's default 4:2:0 (measured in bench/bench_data.py)."""
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality),
              cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    ok, buffer = cv2.imencode(".jpg", image, params)
    if not ok:
        raise BadImage("JPEG encoding failed")
    return buffer.tobytes()


def decode_jpeg(data):
    """Decode our own encoded squares (trusted, complete), BGR; faster than Pillow here."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise BadImage("undecodable encoded datum")
    return image
