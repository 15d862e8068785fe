"""Install the tiledsr host plug-ins: copies each plug-in with tiledsr_host.py beside it.

    python examples/hosts/install.py krita            # ~/.local/share/krita/pykrita (Linux)
    python examples/hosts/install.py gimp             # ~/.config/GIMP/3.0/plug-ins (Linux)
    python examples/hosts/install.py all --tiledsr ~/venvs/tiledsr/bin/tiledsr
    python examples/hosts/install.py krita --target /tmp/pykrita --enable-in /tmp/kritarc

``--tiledsr`` records the tiledsr command in ``tiledsr_command.txt`` beside the copied
tiledsr_host.py (by default the ``tiledsr`` found on PATH now, if any), because a host started
from a desktop menu often has a PATH without your virtualenv. ``--enable-in KRITARC`` also
ticks the plug-in in Krita's Python Plugin Manager (``~/.config/kritarc`` on Linux).
Standard library only, Python 3.8+.
"""
import argparse
import os
import shutil
import stat
import sys
from typing import List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.dirname(HERE)
HOST_MODULE = os.path.join(HERE, "tiledsr_host.py")
KRITA_SRC = os.path.join(EXAMPLES, "krita")
GIMP_SRC = os.path.join(EXAMPLES, "gimp", "tiledsr-upscale")
KRITA_NAME = "tiledsr_krita"
GIMP_NAME = "tiledsr-upscale"
COMMAND_FILE = "tiledsr_command.txt"


def default_folder(host: str) -> str:
    """The per-user plug-in folder of ``host`` ("krita" or "gimp") on this system."""
    home = os.path.expanduser("~")
    if sys.platform.startswith("win"):
        krita = gimp = os.environ.get("APPDATA", os.path.join(home, "AppData", "Roaming"))
    elif sys.platform == "darwin":
        krita = gimp = os.path.join(home, "Library", "Application Support")
    else:
        krita = os.environ.get("XDG_DATA_HOME", os.path.join(home, ".local", "share"))
        gimp = os.environ.get("XDG_CONFIG_HOME", os.path.join(home, ".config"))
    if host == "krita":
        return os.path.join(krita, "krita", "pykrita")
    return os.path.join(gimp, "GIMP", "3.0", "plug-ins")


def _copy_tree(src: str, dst: str) -> None:
    if os.path.isdir(dst):
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def _add_host_module(folder: str, command: Optional[str]) -> None:
    shutil.copy2(HOST_MODULE, os.path.join(folder, "tiledsr_host.py"))
    recorded = os.path.join(folder, COMMAND_FILE)
    if command:
        with open(recorded, "w", encoding="utf-8") as fh:
            fh.write(command + "\n")
    elif os.path.exists(recorded):
        os.remove(recorded)


def install_krita(target: str, command: Optional[str]) -> List[str]:
    """``target``/tiledsr_krita.desktop and ``target``/tiledsr_krita/ (with tiledsr_host.py)."""
    os.makedirs(target, exist_ok=True)
    package = os.path.join(target, KRITA_NAME)
    _copy_tree(os.path.join(KRITA_SRC, KRITA_NAME), package)
    shutil.copy2(os.path.join(KRITA_SRC, KRITA_NAME + ".desktop"), target)
    _add_host_module(package, command)
    return [os.path.join(target, KRITA_NAME + ".desktop"), package]


def install_gimp(target: str, command: Optional[str]) -> List[str]:
    """``target``/tiledsr-upscale/ with tiledsr-upscale.py (executable) and tiledsr_host.py."""
    os.makedirs(target, exist_ok=True)
    folder = os.path.join(target, GIMP_NAME)
    _copy_tree(GIMP_SRC, folder)
    _add_host_module(folder, command)
    script = os.path.join(folder, GIMP_NAME + ".py")
    mode = os.stat(script).st_mode
    os.chmod(script, mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)  # GIMP runs only executable plug-ins
    return [folder]


def enable_in_kritarc(kritarc: str) -> None:
    """Set ``enable_tiledsr_krita=true`` in the [python] group of a kritarc (other lines kept)."""
    key = "enable_%s=true" % KRITA_NAME
    lines: List[str] = []
    if os.path.exists(kritarc):
        with open(kritarc, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    section, out, done = None, [], False
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            if section == "python" and not done:
                out.append(key)
                done = True
            section = stripped[1:-1]
        elif section == "python" and stripped.split("=", 1)[0].strip() == "enable_%s" % KRITA_NAME:
            out.append(key)
            done = True
            continue
        out.append(line)
    if not done:
        if section != "python":
            out += ([""] if out else []) + ["[python]"]
        out.append(key)
    os.makedirs(os.path.dirname(os.path.abspath(kritarc)), exist_ok=True)
    with open(kritarc, "w", encoding="utf-8") as fh:
        fh.write("\n".join(out) + "\n")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Install the tiledsr plug-ins for Krita and GIMP 3.")
    parser.add_argument("host", choices=["krita", "gimp", "all"])
    parser.add_argument("--target", help="plug-in folder (default: the host's per-user folder; not with all)")
    parser.add_argument("--tiledsr", help="the tiledsr command to record (default: tiledsr on PATH, if any)")
    parser.add_argument("--enable-in", metavar="KRITARC", help="also enable the Krita plug-in in this kritarc")
    args = parser.parse_args(argv)
    if args.host == "all" and args.target:
        parser.error("--target names one host's folder; install krita and gimp separately")
    command = args.tiledsr or shutil.which("tiledsr")
    if command and os.path.exists(command):
        command = os.path.abspath(command)
    hosts = ["krita", "gimp"] if args.host == "all" else [args.host]
    for host in hosts:
        target = args.target or default_folder(host)
        made = (install_krita if host == "krita" else install_gimp)(target, command)
        for path in made:
            print("installed %s" % path)
    if args.enable_in and "krita" in hosts:
        enable_in_kritarc(args.enable_in)
        print("enabled %s in %s" % (KRITA_NAME, args.enable_in))
    print("tiledsr command: %s" % (command or "not found now; set TILEDSR or put tiledsr on PATH"))
    if "krita" in hosts and not args.enable_in:
        print("Krita: restart it, tick 'tiledsr upscale' in Settings > Configure Krita > Python Plugin Manager, "
              "restart again; then Tools > Scripts > Upscale with tiledsr...")
    if "gimp" in hosts:
        print("GIMP 3: restart it; then Filters > Enhance > Upscale with tiledsr...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
