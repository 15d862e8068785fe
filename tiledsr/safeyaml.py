"""Bounded YAML and file reading for presets and ``--set`` values.

:func:`parse_yaml` is a ``yaml.SafeLoader`` with bounds, and :func:`read_text` reads a file,
pipe or device with a byte cap and a time limit: a hostile document (an alias bomb, deep
nesting, a pipe that never ends, a huge file) is a one-line :class:`PresetError`, quickly and
in little memory.
"""
from __future__ import annotations

import os
import select
import stat
import time
from pathlib import Path
from typing import Any

import yaml

from .text import cut
from .errors import PresetError

__all__ = ["PresetLoader", "parse_yaml", "read_text"]

MAX_PRESET_BYTES = 256 * 1024  # bundled presets are a few hundred bytes
MAX_NODES = 10_000  # values in a document, each use of an alias counting all it holds
MAX_DEPTH = 50  # nesting of lists and mappings, through aliases too
READ_TIMEOUT = 10.0  # seconds to wait on a pipe or device that gives no data
TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"


class TooComplex(yaml.YAMLError):
    """A YAML document beyond :class:`PresetLoader`'s bounds."""


class PresetLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with bounds: at most MAX_NODES values with every alias expanded,
    nesting at most MAX_DEPTH deep, no alias inside what it names. Dates stay strings.

    Small anchors and aliases (``&p`` ... ``*p``) keep working.
    """

    yaml_implicit_resolvers = {first: [r for r in rs if r[0] != TIMESTAMP_TAG]
                               for first, rs in yaml.SafeLoader.yaml_implicit_resolvers.items()}

    def __init__(self, stream):
        super().__init__(stream)
        self.depth = 0  # lists and mappings open around the node being composed
        self.count = 0  # values so far, aliases expanded
        self.sizes: dict[int, tuple[int, int, yaml.Node]] = {}  # id -> (values, height, node)

    def compose_node(self, parent, index):
        alias = self.check_event(yaml.AliasEvent)
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise TooComplex(f"nested more than {MAX_DEPTH} levels deep")
            node = super().compose_node(parent, index)
        finally:
            self.depth -= 1
        size, height = self._measure(node, alias)
        if self.depth + 1 + height > MAX_DEPTH:
            raise TooComplex(f"an alias nests values more than {MAX_DEPTH} levels deep")
        self.count += size if alias else 1
        if self.count > MAX_NODES:
            raise TooComplex(f"more than {MAX_NODES} values (an alias counts everything it names, each time)")
        return node

    def _measure(self, node: yaml.Node, alias: bool) -> tuple[int, int]:
        """(values, height) of ``node`` with aliases expanded, computed once per node."""
        known = self.sizes.get(id(node))
        if known:
            return known[0], known[1]
        if alias:
            raise TooComplex("an alias is used inside the list or mapping it names")
        kids = node.value if isinstance(node, yaml.SequenceNode) else []
        if isinstance(node, yaml.MappingNode):
            kids = [n for pair in node.value for n in pair]
        measured = [self.sizes[id(k)] for k in kids]
        size, height = 1 + sum(m[0] for m in measured), max((m[1] + 1 for m in measured), default=0)
        self.sizes[id(node)] = (size, height, node)
        return size, height


def parse_yaml(text: str, where: str, source: str = "preset") -> Any:
    """One YAML document through :class:`PresetLoader`; PresetError (one line) if it is not acceptable."""
    loader = None
    try:
        loader = PresetLoader(text)  # checks the characters already
        loader.name = source  # marks in messages say 'in "p.yaml", line 3'
        return loader.get_single_data()
    except TooComplex as exc:
        raise PresetError(f"{where}: refused, {exc}; write the values out plainly") from None
    except RecursionError:
        raise PresetError(f"{where}: refused, nested too deeply; write the values out plainly") from None
    except yaml.YAMLError as exc:
        raise PresetError(f"{where}: not valid YAML: {cut(exc, 200)}") from None
    except Exception as exc:  # a constructor failed (`!!int xyz`, a 5000-digit number): the text is at fault
        raise PresetError(f"{where}: not valid YAML: a value cannot be built ({cut(exc, 100)}); "
                          "check explicit !!tags and long numbers") from None
    finally:
        if loader is not None:
            loader.dispose()


def _read_fd(fd: int, where: str) -> bytes:
    """Up to MAX_PRESET_BYTES from a non-blocking ``fd``; PresetError past that or past READ_TIMEOUT."""
    chunks, size = [], 0
    deadline = time.monotonic() + READ_TIMEOUT
    while size <= MAX_PRESET_BYTES:
        left = deadline - time.monotonic()
        try:
            chunk = os.read(fd, MAX_PRESET_BYTES + 1 - size) if left > 0 else None
        except BlockingIOError:
            select.select([fd], [], [], left)
            continue
        if chunk is None:
            raise PresetError(f"{where}: no end of data after {READ_TIMEOUT:g} s; give a file or a pipe that ends")
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
    raise PresetError(f"{where}: larger than {MAX_PRESET_BYTES // 1024} KiB; a preset is a short YAML file")


def read_text(path: Path, where: str) -> str:
    """The text of a preset file (or pipe, or device), read with a byte cap and a time limit."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)  # non-blocking: opening a FIFO with no writer must not hang
    except (OSError, ValueError) as exc:
        raise PresetError(f"{where}: cannot read: {getattr(exc, 'strerror', None) or exc}; check the path") from None
    try:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise PresetError(f"{where}: is a folder; give a YAML file")
        data = _read_fd(fd, where)
    except OSError as exc:
        raise PresetError(f"{where}: cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PresetError(f"{where}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
