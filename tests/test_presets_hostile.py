"""Hostile presets and --set values: always one short PresetError line, quickly, in little memory."""
import dataclasses
import json
import os
import random
import subprocess
import sys
import textwrap
import time

import pytest

from tiledsr import presets, safeyaml
from tiledsr.errors import PresetError
from tiledsr.presets import Preset, load_preset, validate
from tiledsr.stages import stage_class

MAX_MESSAGE = 400


def write(tmp_path, text, name="p.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def refused(where, *args, **kwargs) -> str:
    """load_preset(...) must raise PresetError with one short line; returns the message."""
    with pytest.raises(PresetError) as e:
        load_preset(where, *args, **kwargs)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < MAX_MESSAGE, msg[:1000]
    return msg


def lol_bomb(levels=8, width=9, flow=False):
    """Billion-laughs: each level is a list of `width` aliases of the previous one."""
    items = ["&a0 [" + ", ".join(["lol"] * width) + "]"]
    items += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "[" + ", ".join(items) + "]" if flow else "".join(f"\n- {it}" for it in items)


def map_bomb(levels=8, width=9):
    """The same with mappings."""
    lines = ["&m0 {" + ", ".join(f"k{j}: lol" for j in range(width)) + "}"]
    lines += [f"&m{i} {{" + ", ".join(f"k{j}: *m{i - 1}" for j in range(width)) + "}" for i in range(1, levels)]
    return "".join(f"\n  x{i}: {line}" for i, line in enumerate(lines))


# Run in a child with a memory cap and a timeout: on a loader without bounds these
# cases never finish or take gigabytes.
CHILD = textwrap.dedent("""
    import json, resource, sys, time
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
    from tiledsr.errors import PresetError
    from tiledsr.presets import load_preset
    for line in sys.stdin:
        path, sets = json.loads(line)
        t = time.monotonic()
        try:
            load_preset(path, sets=sets)
            out = {"kind": "accepted"}
        except PresetError as e:
            out = {"kind": "PresetError", "msg": str(e)[:2000], "length": len(str(e))}
        except BaseException as e:
            out = {"kind": type(e).__name__}
        out["seconds"] = round(time.monotonic() - t, 2)
        print(json.dumps(out), flush=True)
""")


def in_child(cases, timeout=90):
    """load_preset(path, sets=sets) for each case in a capped child process; one result per case."""
    stdin = "".join(json.dumps(c) + "\n" for c in cases)
    r = subprocess.run([sys.executable, "-c", CHILD], input=stdin, capture_output=True, text=True,
                       timeout=timeout)
    results = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(results) == len(cases), r.stderr[-2000:]
    return results


def test_alias_bombs_are_refused_quickly(tmp_path):
    """Class: aliases that expand beyond the bound, in a file (lists, mappings, stage values) and in --set."""
    files = {
        "list.yaml": f"description:{lol_bomb()}\nstages: [{{type: sr}}]\n",
        "deeplist.yaml": f"stages: [{{type: sr, model: {lol_bomb(12, 4, flow=True)}}}]\n",
        "map.yaml": f"description:{map_bomb()}\nstages: [{{type: sr}}]\n",
        "output.yaml": f"stages: [{{type: sr}}]\noutput: {{format: {lol_bomb(7, 10, flow=True)}}}\n",
    }
    cases = [[write(tmp_path, text, name), []] for name, text in files.items()]
    cases.append(["photo-x4", ["description=" + lol_bomb(8, 9, flow=True)]])
    cases.append(["photo-x4", ["sr.model=" + lol_bomb(8, 9, flow=True)]])
    for case, res in zip(cases, in_child(cases)):
        assert res["kind"] == "PresetError", (case, res)
        assert res["length"] < MAX_MESSAGE and "\n" not in res["msg"] and res["seconds"] < 5, res
        assert "refused" in res["msg"] and "values" in res["msg"], res


def test_presets_show_of_an_alias_bomb_is_one_line(tmp_path):
    bomb = write(tmp_path, f"description:{lol_bomb()}\nstages: [{{type: sr}}]\n")
    code = "import resource; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30)); " \
           "import sys; from tiledsr.cli import main; sys.exit(main(sys.argv[1:]))"
    r = subprocess.run([sys.executable, "-c", code, "presets", "show", bomb], capture_output=True, text=True,
                       timeout=90)
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and len(r.stderr) < MAX_MESSAGE + 50, r.stderr[:500]


def test_small_aliases_and_merge_keys_still_work(tmp_path):
    text = ("stages:\n"
            "- type: img2img\n  prompt: &p a cat on a sofa\n  negative_prompt: *p\n  <<: &base {steps: 5, guidance: 3}\n"
            "- type: img2img\n  <<: *base\n  prompt: *p\n")
    a, b = (s.config for s in load_preset(write(tmp_path, text)).stages)
    assert a.prompt == a.negative_prompt == b.prompt == "a cat on a sofa"
    assert (a.steps, b.steps, b.guidance) == (5, 5, 3.0)


@pytest.mark.parametrize("text", [
    "[" * 100_000,
    "{a: " * 10_000 + "1" + "}" * 10_000,
    "stages: [{type: sr, model: " + "[" * 5000 + "]" * 5000 + "}]",
    "".join(" " * i + "a:\n" for i in range(60)) + " " * 60 + "1\n",
    # shallow where written, deep where used: an alias of a 30-deep list used 30 deep
    "description: [&d " + "[" * 30 + "]" * 30 + ", " + "[" * 30 + "*d" + "]" * 30 + "]\nstages: [{type: sr}]",
    "description: &r [*r]\nstages: [{type: sr}]",
])
def test_deep_nesting_is_a_preset_error(tmp_path, text):
    """Class: nesting deeper than the bound, written out or through an alias, or an alias inside itself."""
    msg = refused(write(tmp_path, text))
    assert "p.yaml" in msg and "refused" in msg


def deep_list(n):
    v = "bottom"
    for _ in range(n):
        v = [v]
    return v


def test_deep_python_values_are_a_preset_error():
    """Class: the same through the Python API (no YAML), caught at the validate boundary."""
    with pytest.raises(PresetError):
        validate({"stages": [{"type": "sr", "model": deep_list(100_000)}]}, "pipeline")
    refused("lanczos", {"description": deep_list(100_000)})
    msg = refused("lanczos", {"description": {"a": deep_list(100_000)}})
    assert "description" in msg


def test_oversized_and_endless_files_are_refused(tmp_path):
    """Class: a preset path that is huge (sparse), a device without end, or never-ending data."""
    huge = tmp_path / "huge.yaml"
    with open(huge, "wb") as f:
        f.truncate(3 << 30)  # sparse: takes no disk
    long_ok = tmp_path / "long.yaml"
    long_ok.write_text("description: '" + "x" * (400 << 10) + "'\nstages: [{type: sr}]\n")
    cases = [[str(huge), []], ["/dev/zero", []], [str(long_ok), []]]
    for case, res in zip(cases, in_child(cases)):
        assert res["kind"] == "PresetError" and "larger than" in res["msg"] and res["seconds"] < 5, (case, res)


def test_pipes_work_and_never_hang(tmp_path, monkeypatch):
    """Class: FIFOs and process substitution (<(cat p.yaml)): read once, with a byte cap and a time limit."""
    good = write(tmp_path, "stages: [{type: sr}]\n")
    cat = subprocess.Popen(["cat", good], stdout=subprocess.PIPE)
    try:
        assert isinstance(load_preset(f"/dev/fd/{cat.stdout.fileno()}"), Preset)
    finally:
        cat.stdout.close()
        cat.wait()
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    t = time.monotonic()
    assert "empty" in refused(str(fifo))  # no writer: end of data at once
    monkeypatch.setattr(safeyaml, "READ_TIMEOUT", 0.3)
    writer = os.open(fifo, os.O_RDWR)  # a writer that never writes nor closes
    try:
        assert "no end of data" in refused(str(fifo))
    finally:
        os.close(writer)
    assert time.monotonic() - t < 5


@pytest.mark.parametrize("make", [
    lambda p: p.mkdir(),
    lambda p: p.write_bytes(b"stages: [{type: sr, model: \xff\xfe}]\n"),
    lambda p: p.write_bytes(b""),
    lambda p: p.write_bytes(b"stages: [{type: sr, model: a\x00b}]\n"),
])
def test_unreadable_files_are_one_line(tmp_path, make):
    make(tmp_path / "p.yaml")
    assert "p.yaml" in refused(str(tmp_path / "p.yaml"))


STAGES = "stages: [{type: sr}]\n"
HEX_HUGE = "0x" + "f" * 5000  # an integer of 20,000 bits: more digits than Python will print


@pytest.mark.parametrize("text,needle", [
    # timestamps: dates stay strings, explicit ones are not numbers or names
    ("seed: 2001-01-01\n" + STAGES, "seed: expected an integer or null, got '2001-01-01'"),
    ("tile: !!timestamp 2001-01-01\n" + STAGES, "tile: expected an integer"),
    ("tile: !!timestamp nope\n" + STAGES, "not valid YAML"),
    # binary, sets, ordered maps
    ("stages: [{type: sr, model: !!binary aGVsbG8=}]", "model: expected a string, got b'hello'"),
    ("description: !!set {a, b}\n" + STAGES, "description: expected a string"),
    ("description: !!omap [a: 1]\n" + STAGES, "description: expected a string"),
    # keys that are not names
    ("? [a, b]\n: 1\n" + STAGES, "not valid YAML"),
    ("1: x\n" + STAGES, "unknown key 1"),
    ("null: x\n" + STAGES, "unknown key None"),
    ("true: x\n" + STAGES, "unknown key True"),
    (".nan: x\n" + STAGES, "unknown key nan"),
    ("stages: [{type: sr, 2001-01-01: x}]", "unknown key '2001-01-01'"),
    ("output: {? !!binary aGk=: png}\n" + STAGES, "unknown key b'hi'"),
    ("output:\n  ? " + HEX_HUGE + "\n  : png\n" + STAGES, "unknown key <an integer of 20000 bits>"),
    # absurd numbers
    ("tile: 1" + "0" * 100 + "\n" + STAGES, "tile: <an integer of 333 bits> is too large"),
    ("tile: -1" + "0" * 100 + "\n" + STAGES, "too small"),
    ("tile: 100000\n" + STAGES, "tile: 100000 is too large; use at most 65536"),
    ("batch: 100000\n" + STAGES, "batch: 100000 is too large"),
    ("overlap: " + HEX_HUGE + "\n" + STAGES, "overlap: <an integer of 20000 bits> is too large"),
    ("seed: 1" + "0" * 30 + "\n" + STAGES, "seed: "),
    ("stages: [{type: img2img, steps: " + HEX_HUGE + "}]", "steps: <an integer of 20000 bits>"),
    ("stages: [{type: sr, tile: 1" + "0" * 30 + "}]", "tile: "),
    ("stages: [{type: resize, width: 1" + "0" * 30 + "}]", "width: "),
    ("stages: [{type: txt2img, height: 99999999}]", "height: 99999999 is too large"),
    ("stages: [{type: resize, scale: 1" + "0" * 400 + "}]", "scale: <an integer of"),
    ("stages: [{type: resize, scale: 1.0e+400}]", "scale: expected a finite number, got inf"),
    ("stages: [{type: sr, context: 1" + "0" * 30 + "}]", "context: "),
    ("stages: [{type: img2img, guidance: 1.0e+300}]", "guidance: 1e+300 is too large"),
    ("tile: !!int 1" + "0" * 5000 + "\n" + STAGES, "not valid YAML"),
    ("device: cuda:99999999999999999999\n" + STAGES, "device: expected auto"),
    # NaN and infinities where numbers are expected
    ("stages: [{type: img2img, strength: .nan}]", "strength: expected a finite number, got nan"),
    ("stages: [{type: img2img, guidance: .inf}]", "guidance: expected a finite number, got inf"),
    ("stages: [{type: resize, scale: .NaN}]", "scale: expected a finite number"),
    ("stages: [{type: sr, scale: -.inf}]", "scale: expected a finite number, got -inf"),
    ("stages: [{type: latent-x2, noise_level: .nan}]", "noise_level: expected a finite number"),
    # explicit tags that the safe loader cannot build
    ("tile: !!int xyz\n" + STAGES, "not valid YAML"),
    ("tile: !!bool maybe\n" + STAGES, "not valid YAML"),
    ("tile: !!float abc\n" + STAGES, "not valid YAML"),
    ("tile: !!python/name:os.system\n" + STAGES, "not valid YAML"),
    # control characters and NUL
    ('name: "a\\0b"\n' + STAGES, "name: control character '\\x00'"),
    ('name: "two\\nlines"\n' + STAGES, "name: control character '\\n'"),
    ('stages: [{type: sr, model: "x\\e[2J"}]', "model: control character '\\x1b'"),
    ('description: "bell\\a"\n' + STAGES, "description: control character '\\x07'"),
    ('stages: [{type: img2img, prompt: "a\\x7fb"}]', "prompt: control character '\\x7f'"),
    ('stages: [{type: "s\\0r"}]', "expected a mapping with a 'type'"),
    ('device: "cpu\\n"\n' + STAGES, "device: control character"),
    # wrong shapes
    ("description: {a: 1}\n" + STAGES, "description: expected a string, got {'a': 1}"),
    ("output: [png]\n" + STAGES, "output: expected a mapping"),
    ("output: {bit_depth: 8.0}\n" + STAGES, "bit_depth: expected one of 8, 16"),
    ("stages: [{type: [sr]}]", "expected a mapping with a 'type'"),
    ("stages: [sr]", "expected a mapping with a 'type'"),
    ("stages: [" + ", ".join(["{type: colorfix}"] * 65) + "]", "65 stages; at most 64"),
    ("stages: [" + ", ".join(["{type: colorfix}"] * 10_000) + "]", "refused, more than 10000 values"),
    ("a: 1\n---\nb: 2\n", "not valid YAML"),
])
def test_hostile_values_are_preset_errors(tmp_path, text, needle):
    """Class: every YAML value type a user can write, where the preset does not expect it."""
    msg = refused(write(tmp_path, text))
    assert needle in msg and "p.yaml" in msg


BIG = "x" * 200_000


@pytest.mark.parametrize("args", [
    (f"tile: '{BIG}'\n" + STAGES,),
    (f"description: [{', '.join(['abc'] * 5000)}]\n" + STAGES,),
    (f"? {BIG}\n: 1\n" + STAGES,),
    (f"stages: [{{type: sr, ? {BIG}\n : 1}}]",),
    (f"stages: [{{type: sr{BIG}}}]",),
    (f"stages: [{{type: '{BIG[:60]}'}}]",),
    (f"device: {BIG}\n" + STAGES,),
    (f"stages: [{{type: sr, backend: {BIG}}}]",),
    (f"stages: [{{type: resize, scale: 2, method: {BIG}}}]",),
    (STAGES, [f"sr.{BIG}=1"]),
    (STAGES, [f"{BIG}.model=1"]),
    (STAGES, [f"sr.model=[{BIG}"]),
    (STAGES, [f"sr{BIG}"]),
    (STAGES, [f"output.{BIG}=1"]),
    (STAGES, [f"sr.model=[{', '.join(['abc'] * 5000)}]"]),
])
def test_messages_never_hold_a_whole_value(tmp_path, args):
    """Class: a huge value, key, type or --set item is quoted cut to a few dozen characters."""
    text, sets = args[0], (args[1] if len(args) > 1 else [])
    msg = refused(write(tmp_path, text), sets=sets)
    assert "x" * 100 not in msg and "abc, abc, abc, abc, abc" not in msg


def test_long_preset_names_and_paths_are_cut():
    assert len(refused("photo" * 50_000)) < MAX_MESSAGE
    assert len(refused("/nonexistent/" + "d" * 50_000 + ".yaml")) < MAX_MESSAGE
    refused("a\0b.yaml")


def test_dates_stay_strings(tmp_path):
    p = load_preset(write(tmp_path, "description: 2024-01-01\nstages: [{type: img2img, prompt: 2024-01-01 12:00:00}]"))
    assert p.description == "2024-01-01" and p.stages[0].config.prompt == "2024-01-01 12:00:00"


# ---- fuzz -----------------------------------------------------------------------------------

TOP_KEYS = ["name", "description", "tile", "overlap", "blend", "batch", "device", "precision", "seed", "output"]
STAGE_TYPES = ["sr", "resize", "latent-x2", "img2img", "sd-x4", "txt2img", "colorfix", "nosuch", "SR", ""]
STAGE_KEYS = ["model", "scale", "backend", "alpha", "context", "tile", "overlap", "blend", "batch", "width",
              "height", "method", "prompt", "negative_prompt", "steps", "guidance", "strength", "scheduler",
              "mode", "noise_level", "tlie", "type"]
OUTPUT_KEYS = ["format", "bit_depth", "fromat"]
SCALARS = [
    "0", "1", "-1", "2", "4", "8", "16", "64", "512", "1024", "3.5", "-0.0", "1e400", "-1e400", "1" + "0" * 40,
    HEX_HUGE, "0o17", "0b101", "1:20", ".nan", ".inf", "-.inf", "null", "~", "true", "false", "yes", "off",
    "2001-12-14", "2001-12-14t21:59:43.10-05:00", "x4plus", "x4plus-anime", "lanczos", "cosine", "linear",
    "png", "tiff", "fp16", "cpu", "cuda:0", "auto", "wavelet", "adain", "fused", "''", '"a\\0b"', '"\\e[2J"',
    '"\\u2028"', '"\\t"', "!!binary aGk=", "!!set {a, b}", "!!int xyz", "!!float 1e5", "!!str 12",
    "!!timestamp bad", "!!omap [a: 1]", "!!pairs [a: 1]", "!!null ''", "*nosuch", "'" + "y" * 300 + "'",
    "{}", "[]", "[1, 2]", "{a: 1}",
]


PLAUSIBLE = {
    "tile": ["256", "512", "1024"], "overlap": ["0", "32", "64"], "blend": ["cosine", "linear", "gaussian"],
    "batch": ["1", "2"], "device": ["cpu", "auto", "cuda:0"], "precision": ["auto", "fp32", "fp16"],
    "seed": ["0", "7", "null"], "name": ["custom"], "description": ["a preset", "2024-01-01"],
    "model": ["x4plus", "animevideov3", "some/model"], "scale": ["2", "4", "1.5"], "width": ["512", "null"],
    "height": ["512", "1024"], "method": ["lanczos", "area", "wavelet"], "backend": ["auto", "torch"],
    "alpha": ["resize", "sr"], "context": ["null", "8"], "prompt": ["a cat", "''"], "negative_prompt": ["blur"],
    "steps": ["1", "20"], "guidance": ["0", "7.5"], "strength": ["0.2", "0.5"], "scheduler": ["default"],
    "mode": ["fused", "independent"], "noise_level": ["0", "20"], "format": ["png", "tiff", "null"],
    "bit_depth": ["8", "16", "null"],
}


def fuzz_value(rng, depth=0, key=None):
    """A plausible value for ``key`` most of the time, else a random (often hostile) one."""
    r = rng.random()
    if key in PLAUSIBLE and r < 0.85:
        return rng.choice(PLAUSIBLE[key])
    if depth > 3 or r < 0.9:
        return rng.choice(SCALARS)
    if r < 0.95:
        return "[" + ", ".join(fuzz_value(rng, depth + 1) for _ in range(rng.randint(0, 4))) + "]"
    keys = rng.sample(STAGE_KEYS + TOP_KEYS + ["1", "null", "[a, b]"], rng.randint(0, 3))
    return "{" + ", ".join(f"{k}: {fuzz_value(rng, depth + 1)}" for k in keys) + "}"


def fuzz_mapping(rng, keys, n):
    return "{" + ", ".join(f"{k}: {fuzz_value(rng, key=k)}" for k in rng.sample(keys, min(n, len(keys)))) + "}"


def fuzz_stage(rng):
    kind = rng.choice(STAGE_TYPES[:7] * 3 + STAGE_TYPES[7:])
    keys = STAGE_KEYS[:-1]
    if kind in STAGE_TYPES[:7] and rng.random() < 0.9:
        keys = [f.name for f in dataclasses.fields(stage_class(kind).Config)]
    body = fuzz_mapping(rng, keys, rng.randint(0, 4))[1:-1]
    return f"{{type: {kind}" + (f", {body}" if body else "") + "}"


def fuzz_document(rng):
    lines = [f"{k}: {fuzz_value(rng, key=k)}" for k in rng.sample(TOP_KEYS[:-1], rng.randint(0, 5))]
    if rng.random() < 0.4:
        lines.append(f"output: {fuzz_mapping(rng, OUTPUT_KEYS[:2] * 3 + OUTPUT_KEYS[2:], rng.randint(0, 2))}")
    stages = [fuzz_stage(rng) for _ in range(rng.randint(0, 4))]
    lines.append("stages: " + ("[" + ", ".join(stages) + "]" if rng.random() < 0.9 else fuzz_value(rng)))
    if rng.random() < 0.3:  # anchors and aliases
        lines[0] = lines[0].replace(": ", ": &a ", 1)
        lines.append("description: *a")
    text = "\n".join(lines) + "\n"
    if rng.random() < 0.2:  # a random edit
        i = rng.randrange(len(text))
        text = text[:i] + rng.choice(["", "[", "{", ":", "&b ", "*b", "'", "\n  ", ","]) + text[i + 1:]
    return text


def fuzz_set(rng):
    sel = rng.choice(["", "output.", "sr.", "0.", "1.", "img2img.", "nosuch.", "9."])
    key = rng.choice(STAGE_KEYS + TOP_KEYS + OUTPUT_KEYS)
    return f"{sel}{key}={fuzz_value(rng, key=key)}"


def test_fuzzed_presets_give_a_preset_or_one_preset_error(tmp_path):
    """Class: any document made of known keys, stage types and values of random types."""
    rng = random.Random(7)
    t, outcomes = time.monotonic(), {"accepted": 0, "refused": 0}
    for n in range(400):
        path = write(tmp_path, fuzz_document(rng), f"f{n}.yaml")
        sets = [fuzz_set(rng) for _ in range(rng.randint(0, 2))] if n % 3 == 0 else []
        try:
            assert isinstance(load_preset(path, sets=sets), Preset)
            outcomes["accepted"] += 1
        except PresetError as e:
            assert "\n" not in str(e) and len(str(e)) < MAX_MESSAGE, str(e)[:1000]
            outcomes["refused"] += 1
    for n in range(100):  # --set items on bundled presets
        try:
            load_preset(rng.choice(presets.preset_names()), sets=[fuzz_set(rng) for _ in range(3)])
            outcomes["accepted"] += 1
        except PresetError as e:
            assert "\n" not in str(e) and len(str(e)) < MAX_MESSAGE, str(e)[:1000]
            outcomes["refused"] += 1
    assert outcomes["accepted"] > 10 and outcomes["refused"] > 100, outcomes
    assert time.monotonic() - t < 30
