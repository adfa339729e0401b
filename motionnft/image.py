"""Images as tensors: ``(B, 3, H, W)`` float in [0, 1] everywhere inside the library."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from .files import atomic_write

# ITU-R BT.601 luma, the weights of OpenCV's RGB2GRAY, so that a float image converted
# here gives the same 8-bit grey image as cv2.cvtColor on the 8-bit original.
_LUMA = (0.299, 0.587, 0.114)


def check_image_batch(name: str, image: torch.Tensor, channels: tuple[int, ...] = (3,)) -> torch.Tensor:
    """Validate an image batch and return it as a float tensor.

    Args:
        name: what the caller calls this input, used in the error message.
        image: ``(B, C, H, W)`` tensor with C in ``channels``; a ``(C, H, W)`` tensor is
            taken as a batch of one.

    Raises:
        TypeError / ValueError naming ``name`` and the expected layout.
    """
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape (B, 3, H, W), got {type(image).__name__}")
    if image.ndim == 3:
        image = image.unsqueeze(0)
    want = " or ".join(str(c) for c in channels)
    if image.ndim != 4 or image.shape[1] not in channels:
        raise ValueError(f"{name}: expected shape (B, {want}, H, W), got {tuple(image.shape)}")
    if image.shape[0] == 0 or image.shape[2] == 0 or image.shape[3] == 0:
        raise ValueError(f"{name}: empty image batch {tuple(image.shape)}")
    if not image.is_floating_point():
        raise TypeError(f"{name}: expected a float tensor with values in [0, 1], got dtype {image.dtype}")
    return image


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file into a ``(1, 3, H, W)`` float32 tensor in [0, 1].

    Grey, palette and alpha images are converted to RGB (alpha is dropped); 16-bit images keep
    their range (65535 is 1.0); an EXIF orientation is applied, as viewers show the picture.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the path is a folder, a file that is not an image PIL can read, or an image
            over PIL's decompression-bomb pixel limit.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"image {path}: is a folder, expected an image file")
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    return decode_image(path, "image")


def decode_image(source: str | os.PathLike | bytes, what: str) -> torch.Tensor:
    """An image file or its encoded bytes as a ``(1, 3, H, W)`` float32 tensor in [0, 1] (see
    :func:`load_image`).

    Raises:
        FileNotFoundError naming ``what``; ValueError naming ``what`` for undecodable data or an
        image over PIL's pixel limit (its size and the limit in the message).
    """
    import io

    where = f"{len(source)} embedded bytes" if isinstance(source, (bytes, bytearray)) else source
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source) as pil:
            pil.load()
            return pil_to_tensor(pil)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what}: image file not found: {source}") from None
    except Image.DecompressionBombError as error:
        raise ValueError(f"{what}: {where} is too large to decode safely: {error} (PIL's decompression-bomb "
                         "guard, Image.MAX_IMAGE_PIXELS); downscale it first") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"{what}: cannot read {where} as an image (PNG, JPEG, WebP, PPM, ...): {error}") from None


# 16-bit and 32-bit integer modes (PNG/TIFF greys) and their full-scale value
_INTEGER_MODES = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0, "I": 65535.0}


def pil_to_tensor(pil: Image.Image) -> torch.Tensor:
    """PIL image of any mode -> ``(1, 3, H, W)`` float32 in [0, 1], upright.

    The EXIF orientation, if any, is applied. 16-bit greys are scaled by 65535 (mode ``I``, which
    PIL uses for 16-bit PNGs too, likewise), float greys (``F``) are clipped to [0, 1]; both are
    repeated to three channels. Every other mode goes through PIL's RGB conversion.
    """
    pil = ImageOps.exif_transpose(pil) if pil.getexif() else pil
    if pil.mode in _INTEGER_MODES or pil.mode == "F":
        # PIL's own convert("RGB") clips these to 8 bits (values over 255 become white)
        grey = np.asarray(pil, dtype=np.float32)
        grey = grey / _INTEGER_MODES[pil.mode] if pil.mode in _INTEGER_MODES else grey
        array = np.repeat(np.clip(grey, 0.0, 1.0)[..., None], 3, axis=-1)
    else:
        array = np.asarray(pil.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).unsqueeze(0)


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """``(3, H, W)`` or ``(1, 3, H, W)`` float in [0, 1] -> PIL RGB image (rounded to 8 bits)."""
    if image.ndim == 4:
        if image.shape[0] != 1:
            raise ValueError(f"tensor_to_pil: expected one image, got a batch of {image.shape[0]}")
        image = image[0]
    array = to_uint8(image).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, mode="RGB")


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """Float image in [0, 1] -> uint8 in [0, 255] with rounding, same layout."""
    return (image.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8)


def save_image(image: torch.Tensor, path: str | os.PathLike) -> Path:
    """Write a ``(3, H, W)`` / ``(1, 3, H, W)`` float image atomically; format from the suffix."""
    path = Path(path)
    pil = tensor_to_pil(image)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot save {path}: unknown image suffix {path.suffix!r} (use .png, .jpg, .webp)")
    with atomic_write(path) as handle:
        pil.save(handle, format=fmt)
    return path


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``(B, C, H, W)`` to ``size = (H', W')``.

    Plain bilinear with ``align_corners=False`` and no antialiasing: the resize the
    MotionNFT reference applies before computing flows. Returns the input when the size
    already matches.
    """
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image, size=tuple(size), mode="bilinear", align_corners=False)


def to_gray_uint8(image: torch.Tensor) -> np.ndarray:
    """``(B, 3, H, W)`` float in [0, 1] -> ``(B, H, W)`` uint8 grey (BT.601 luma, rounded).

    Equals ``cv2.cvtColor(rgb8, cv2.COLOR_RGB2GRAY)`` up to one grey level.
    A one-channel batch is taken as grey already.
    """
    image = image.detach().float().clamp(0, 1)
    if image.shape[1] == 3:
        weights = torch.tensor(_LUMA, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
        image = (image * weights).sum(dim=1)
    else:
        image = image[:, 0]
    return (image * 255.0).round().to(torch.uint8).cpu().numpy()


def resize_lanczos(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Lanczos resize (PIL's, antialiased when shrinking) of ``(B, C, H, W)`` to ``size = (H', W')``.

    Each channel is resized as a 32-bit float PIL image in PIL's two passes (columns, then
    rows), clamped to [0, 1] after each pass as PIL's 8-bit resize clips, but not rounded to
    8 bits: for an image read from an 8-bit file the result is PIL's
    ``Image.resize(..., LANCZOS)`` of that file to within its 8-bit rounding (< 1.5/255).
    Returns the input when the size already matches.

    Args:
        image: ``(B, C, H, W)`` float in [0, 1].
        size: ``(H', W')``.

    Returns:
        ``(B, C, H', W')`` on the input's device and dtype.

    Example:
        >>> resize_lanczos(torch.rand(2, 3, 64, 96), (32, 32)).shape
        torch.Size([2, 3, 32, 32])
    """
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    height, width = size

    def lanczos(plane: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
        resized = Image.fromarray(np.ascontiguousarray(plane)).resize(size_wh, Image.Resampling.LANCZOS)  # mode "F"
        return np.clip(np.asarray(resized), 0.0, 1.0)

    array = image.detach().float().cpu().numpy()
    out = np.empty(array.shape[:2] + (height, width), dtype=np.float32)
    for b in range(array.shape[0]):
        for c in range(array.shape[1]):
            columns = lanczos(array[b, c], (width, array.shape[2]))
            out[b, c] = lanczos(columns, (width, height))
    return torch.from_numpy(out).to(device=image.device, dtype=image.dtype)


def center_crop_resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Centre-crop ``(B, C, H, W)`` to the aspect ratio of ``size = (H', W')``, then resize to it.

    The largest centred window of the target aspect ratio is kept (nothing is padded or
    stretched), then resized with :func:`resize_lanczos` (Lanczos, antialiased): what the
    MotionNFT release does to its training pairs (``crop`` to the centred square, then
    ``resize((512, 512), LANCZOS)``), so reference latents and ground-truth flows see the
    same pixels.
    """
    height, width = image.shape[-2:]
    target_h, target_w = size
    if height * target_w > width * target_h:  # too tall: crop rows
        crop_h, crop_w = max(1, round(width * target_h / target_w)), width
    else:
        crop_h, crop_w = height, max(1, round(height * target_w / target_h))
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return resize_lanczos(image[..., top : top + crop_h, left : left + crop_w], size)
