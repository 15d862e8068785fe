"""Image files in and out: header probing, decoding to float32 arrays, atomic writing.

PNG, JPEG, TIFF (BigTIFF) and WebP; 8 and 16 bits; grey, grey+alpha, RGB and RGBA;
ICC profile, EXIF and DPI kept; decompression bombs refused from the header.
"""
from .meta import DEFAULT_MAX_PIXELS, ImageInfo
from .read import probe, read_image
from .write import check_destination, output_format, write_image

__all__ = ["DEFAULT_MAX_PIXELS", "ImageInfo", "check_destination", "output_format", "probe", "read_image", "write_image"]
