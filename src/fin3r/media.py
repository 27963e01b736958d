"""Pictures as users have them: image files (EXIF orientation applied) and frames sampled from
videos. Labelling, training, inference and the diagnostics all decode images through
:func:`open_rgb`, so a photo is seen upright -- the way its viewer shows it -- everywhere.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fin3r.errors import InputError

#: the EXIF tag holding the orientation (1 = upright; 5-8 swap width and height)
EXIF_ORIENTATION = 0x0112
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


def exif_orientation(im) -> int:
    """The EXIF orientation of a PIL image (1 when absent or unreadable)."""
    try:
        value = int(im.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # a corrupt EXIF block is no reason to refuse the picture
        return 1
    return value if 1 <= value <= 8 else 1


#: PIL modes holding 8 bits per channel, which ``convert("RGB")`` maps without loss of range
_EIGHT_BIT_MODES = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}


def to_rgb8(im, name: str = "image") -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB of a loaded PIL image. 8-bit modes convert as PIL does (alpha
    dropped, palettes expanded); 16-bit greyscale (``I;16*``, and ``I`` holding values in
    [0, 65535], which is how PNG's 16-bit greyscale opens) is scaled by 255/65535 -- never
    clipped; anything else (float images, signed 32-bit ranges) raises :class:`InputError`
    naming ``name`` and the mode."""
    mode = im.mode
    if mode in _EIGHT_BIT_MODES:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(im).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise InputError(f"{name}: 32-bit integer image with values outside [0, 65535] (mode {mode}): "
                             "convert it to 8 or 16 bits")
        grey = np.rint(values / 257.0).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    raise InputError(f"{name}: unsupported pixel format (PIL mode {mode!r}): save it as 8- or 16-bit RGB/greyscale")


def open_rgb(source: str | Path | bytes, min_hw: tuple[int, int] | None = None
             ) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """Decode an image: ``(rgb (H, W, 3) uint8 upright, full (H, W) upright, stored (H, W))``.

    The EXIF orientation is applied (``stored`` is the size of the pixels as stored in the file,
    ``full`` the size once upright). With ``min_hw`` (upright), JPEGs are decoded at the smallest of
    1/1, 1/2, 1/4, 1/8 scale that still covers it (PIL draft mode). Pixels go through
    :func:`to_rgb8` (16-bit greyscale scaled, not clipped; float images refused with
    :class:`InputError`). PIL's errors propagate (callers name the file).
    """
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source) as im:
        stored = (im.height, im.width)
        swap = exif_orientation(im) in (5, 6, 7, 8)
        full = (stored[1], stored[0]) if swap else stored
        if min_hw is not None and im.format == "JPEG":
            h, w = (min_hw[1], min_hw[0]) if swap else min_hw
            im.draft("RGB", (int(w), int(h)))
        im.load()
        im = ImageOps.exif_transpose(im)
        rgb = to_rgb8(im, "image" if isinstance(source, (bytes, bytearray)) else str(source)).copy()
    return rgb, full, stored


@dataclass
class Frame:
    """A picture that is not a file of its own (a video frame); quacks like the ``Path`` of an image
    file where inference needs ``name``/``stem``.

    Attributes:
        name: e.g. ``clip_f000012.png``.
        rgb: ``(H, W, 3)`` uint8.
        index: the frame's index in the video.
        time_s: its time stamp in seconds.
    """

    name: str
    rgb: np.ndarray
    index: int = 0
    time_s: float = 0.0

    @property
    def stem(self) -> str:
        return Path(self.name).stem

    def __str__(self) -> str:
        return f"{self.name} (t = {self.time_s:.3f} s)"


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def frame_slot(index: int, native_fps: float, fps: float | None) -> int:
    """The ``1 / fps``-second interval frame ``index`` of a ``native_fps`` video falls in; a frame is
    kept when its slot differs from the previous frame's (the first frame of each interval). Every
    frame has its own slot when ``fps`` is ``None`` or not below the native rate."""
    if fps is None or native_fps <= 0 or fps >= native_fps:
        return index
    return math.floor(index / native_fps * fps + 1e-9)


def read_video_frames(path: str | Path, fps: float | None = None, max_frames: int | None = None) -> list[Frame]:
    """Frames of a video sampled at ``fps`` frames per second (default: every frame), at most
    ``max_frames``, through OpenCV (which applies the video's rotation metadata)."""
    import cv2

    path = Path(path)
    if fps is not None and (not math.isfinite(fps) or fps <= 0):
        raise InputError(f"--fps {fps}: need a positive frame rate")
    if max_frames is not None and max_frames < 1:
        raise InputError(f"--max-frames {max_frames}: need at least 1")
    if not path.is_file():
        raise InputError(f"{path}: no such video file")
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise InputError(f"{path}: OpenCV cannot open this video")
        native = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        frames: list[Frame] = []
        slot_last, i = -1, 0
        while max_frames is None or len(frames) < max_frames:
            ok, bgr = cap.read()
            if not ok:
                break
            slot = frame_slot(i, native, fps)
            if slot != slot_last:
                frames.append(Frame(f"{path.stem}_f{i:06d}.png", bgr[..., ::-1].copy(), i,
                                    i / native if native > 0 else 0.0))
                slot_last = slot
            i += 1
    finally:
        cap.release()
    if not frames:
        raise InputError(f"{path}: no frames could be decoded")
    return frames


__all__ = ["EXIF_ORIENTATION", "VIDEO_SUFFIXES", "exif_orientation", "open_rgb", "to_rgb8", "Frame", "is_video", "frame_slot",
           "read_video_frames"]
