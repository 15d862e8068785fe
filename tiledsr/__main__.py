"""``python -m tiledsr`` and the ``tiledsr`` console script.

Until the command line installs its own handlers, Ctrl-C ends the process quietly (no traceback
from an interrupted import); a SIGINT the parent ignores stays ignored.
"""
import signal

if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run() -> None:
    from .cli import entry

    entry()


if __name__ == "__main__":
    run()
