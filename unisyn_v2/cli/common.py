"""What every command line shares: logging set-up, the CPU thread policy and one-line errors instead of tracebacks."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from unisyn_v2.parallel import apply_thread_policy

logger = logging.getLogger("unisyn_v2")

EXIT_USER_ERROR = 2


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """--verbose and --threads on every CLI."""
    parser.add_argument("--verbose", action="store_true", help="debug logging and full tracebacks on errors")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads of this command, shared by its worker processes (default: OMP_NUM_THREADS, "
                             "else the cores not busy with other work; 0: torch's default)")


def configure_logging(verbose: bool) -> None:
    """Handlers are configured here, in entry points only; the library just logs."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s" if verbose else "%(levelname)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )


def run_cli(body: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a CLI body under the thread policy; user-facing errors become a one-line message and a non-zero exit."""
    configure_logging(getattr(args, "verbose", False))
    try:
        apply_thread_policy(getattr(args, "threads", None))
        return body(args)
    except KeyboardInterrupt:
        logger.error("interrupted; rerun the same command to resume")
        return 130
    except (ValueError, LookupError, OSError, RuntimeError) as error:
        if getattr(args, "verbose", False):
            raise
        message = str(error).strip() or type(error).__name__
        print(f"error: {message}", file=sys.stderr)
        print("(run with --verbose for the full traceback)", file=sys.stderr)
        return EXIT_USER_ERROR
