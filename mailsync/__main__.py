"""The process's entry: ``python -m mailsync`` and the console script ``mailsync``.

The collector is made patient (:func:`mailsync.collector.patient`) before the command line
is imported: the imports are most of a one-shot command's start.
"""

from __future__ import annotations

from mailsync import collector


def main() -> None:
    collector.patient()
    # Here, after the collector is made patient: importing click and the command line
    # makes most of the objects of a command's start.
    from mailsync.cli import main as command_line

    command_line()


if __name__ == "__main__":
    main()
