"""``mambaspec`` / ``python -m mambaspec``: the command line, with a clean exit on Ctrl-C at any moment."""

import os
import signal
import sys


def main() -> None:
    # Ctrl-C while Python is still importing the command line: one line, no traceback.
    signal.signal(signal.SIGINT, lambda *_: (sys.stderr.write("interrupted\n"), os._exit(130)))
    if not sys.stdout.isatty() and "COLUMNS" not in os.environ and "TERMINAL_WIDTH" not in os.environ:
        os.environ["TERMINAL_WIDTH"] = "160"  # --help piped to a file or a pager: no option names cut at 80 columns
    from .cli import main as cli_main

    signal.signal(signal.SIGINT, signal.default_int_handler)  # from here on the commands handle Ctrl-C themselves
    try:
        cli_main()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)


if __name__ == "__main__":
    main()
