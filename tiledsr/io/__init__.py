"""Image files in and out: header probing, decoding to float32 arrays or by row bands,
streamed atomic writing.

PNG, JPEG, TIFF (BigTIFF) and WebP; 8 and 16 bits; grey, grey+alpha, RGB and RGBA;
ICC profile, EXIF and DPI kept; decompression bombs refused from the header; stdin, stdout,
FIFOs and pipes; every output marked with Software = "tiledsr <version>".
"""
from .meta import DEFAULT_MAX_PIXELS, ImageInfo
from .read import probe, read_image
from .regions import RowSource, open_rows
from .checks import check_output, output_format
from .files import discard_live_temps, remove_stale_temps
from .write import software_name, write_bands, write_image

__all__ = ["DEFAULT_MAX_PIXELS", "ImageInfo", "RowSource", "check_output", "discard_live_temps", "open_rows",
           "output_format", "probe", "read_image", "remove_stale_temps", "software_name", "write_bands",
           "write_image"]
