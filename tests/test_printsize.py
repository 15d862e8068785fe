"""Print sizes: parsing (units, forms, refusals) and the target pixels for an image."""
import pytest

from tiledsr.errors import InputError
from tiledsr.printsize import PrintSize, parse_print, print_target


@pytest.mark.parametrize("text,width,height,dpi", [
    ("24x36in@300", 24, 36, 300),
    ("24x36in@300dpi", 24, 36, 300),
    ("24X36IN@300DPI", 24, 36, 300),
    (" 24 x 36 in @ 300 dpi ", 24, 36, 300),
    ('8.5x11"@600', 8.5, 11, 600),
    ("60x90cm@300", 60 / 2.54, 90 / 2.54, 300),
    ("610x914mm@300", 610 / 25.4, 914 / 25.4, 300),
    ("0.5x.75in@72.5", 0.5, 0.75, 72.5),
])
def test_parses_units_and_forms(text, width, height, dpi):
    ps = parse_print(text)
    assert isinstance(ps, PrintSize) and ps.text == text.strip()
    assert ps.width == pytest.approx(width) and ps.height == pytest.approx(height) and ps.dpi == dpi


@pytest.mark.parametrize("text,why", [
    ("24x36in", "give the resolution after @"),
    ("24x36in@", "give the resolution after @"),
    ("24x36@300", "give a unit"),
    ("24x36ft@300", "unknown unit 'ft'"),
    ("24x36px@300", "unknown unit 'px'"),
    ("0x36in@300", "must be positive"),
    ("-24x36in@300", "must be positive"),
    ("24x0cm@300", "must be positive"),
    ("24x36in@0", "DPI must be in 1..10000, got 0"),
    ("24x36in@0.5", "DPI must be in 1..10000"),
    ("24x36in@10001", "DPI must be in 1..10000"),
    ("24x36in@-300", "DPI must be in 1..10000"),
    ("4000x36in@300", "more than 1048576 pixels a side"),
    ("9" * 400 + "x1in@300", "more than 1048576 pixels a side"),
    ("0.001x1in@1", "less than one pixel"),
    ("24x36", "give a unit"),
    ("24in@300", "expected WIDTHxHEIGHT"),
    ("24x36x2in@300", "expected WIDTHxHEIGHT"),
    ("big", "expected WIDTHxHEIGHT"),
    ("", "expected WIDTHxHEIGHT"),
    ("24x36in@300\nrm -rf", "expected WIDTHxHEIGHT"),
])
def test_refusals_are_one_line_and_show_the_form(text, why):
    with pytest.raises(InputError, match=why) as err:
        parse_print(text)
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 300
    assert "24x36in@300" in msg or "DPI must be" in msg or "pixels a side" in msg or "one pixel" in msg


def test_exactly_the_limit_is_accepted():
    assert parse_print("1048576x1in@1").pixels() == (1048576, 1)
    assert parse_print("1x1in@10000").pixels() == (10000, 10000)


def test_portrait_print_on_portrait_and_landscape_images():
    ps = parse_print("24x36in@300")
    portrait = print_target(ps, 2000, 3000)
    assert (portrait.width, portrait.height) == (7200, 10800) and portrait.size == (7200, 10800)
    assert portrait.dpi == (300.0, 300.0) and portrait.note is None
    landscape = print_target(ps, 3000, 2000)  # the print turns with the image
    assert landscape.size == (10800, 7200) and landscape.note is None
    assert print_target(parse_print("36x24in@300"), 2000, 3000).size == (7200, 10800)


def test_a_square_image_is_fitted_inside_with_a_note():
    t = print_target(parse_print("24x36in@300"), 1000, 1000)
    assert t.size == (7200, 7200) and t.dpi == (300.0, 300.0)
    assert t.note == ("the image's aspect 1.00 differs from the print's 1.50 by 50%; "
                      "fitted inside the print: 7200x7200 px of 7200x10800")


def test_fit_keeps_the_aspect_with_one_side_exact():
    ps = parse_print("24x36in@300")
    t = print_target(ps, 3, 4)  # 4:3 portrait on a 3:2 print: the width is exact
    assert t.size == (7200, 9600) and "by 12.5%" in t.note and "7200x9600 px of 7200x10800" in t.note
    t = print_target(ps, 1000, 2000)  # 2:1 portrait: taller than the print, the height is exact
    assert t.size == (5400, 10800) and "1.50" in t.note and "2.00" in t.note
    t = print_target(ps, 4000, 100)  # a strip: one side exact, the other at least one pixel
    assert t.size == (10800, 270)


def test_within_one_percent_is_exactly_the_print():
    ps = parse_print("24x36in@300")
    assert print_target(ps, 2000, 2990).size == (7200, 10800)  # 0.5% off: stretched, no note
    assert print_target(ps, 2000, 3030).note is None  # 1.0% off: still the print
    off = print_target(ps, 2000, 3040)  # 1.33% off: fitted
    assert off.size == (7105, 10800) and off.note is not None


def test_cm_and_mm_conversions_and_rounding():
    assert parse_print("60x90cm@300").pixels() == (7087, 10630)  # 7086.61, 10629.92
    assert parse_print("610x914mm@300").pixels() == (7205, 10795)  # 7204.72, 10795.28
    assert parse_print("10x15cm@300").pixels() == (1181, 1772)  # 1181.10, 1771.65
    assert parse_print("25.4x50.8mm@100").pixels() == (100, 200)  # exactly 1 x 2 in
    assert parse_print("2.54x7.62cm@100").pixels() == (100, 300)
    assert parse_print("1.5x2.5in@1").pixels() == (2, 3)  # halves round up, not to even
    t = print_target(parse_print("10x15cm@300"), 400, 600)
    assert t.size == (1181, 1772) and t.note is None


def test_bad_image_size_is_refused():
    with pytest.raises(InputError, match="positive size"):
        print_target(parse_print("24x36in@300"), 0, 10)
