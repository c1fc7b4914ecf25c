"""User mistakes on the command line: one error message instead of a traceback, and early checks of model paths.

The ``efficientvlm`` command and the example scripts report an error that the user can fix (a ``ValueError`` or an
``OSError``: a bad flag value, a missing file, an unreachable Hub, ...) as one message on standard error and exit
with status 2; ``--debug`` (or ``EFFICIENTVLM_DEBUG=1``) shows the full traceback instead. Any other exception is a
bug and always shows its traceback. An example script ends with::

    if __name__ == "__main__":
        sys.exit(run_script(main))
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: Exceptions that describe a mistake the user can fix; the library's errors name the problem and the fix.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)
#: Exit status of a run stopped by a user mistake (argparse's status for bad arguments).
USER_ERROR_STATUS = 2
DEBUG_FLAG = "--debug"


def debug_requested(argv: Sequence[str] | None = None) -> bool:
    """Whether ``--debug`` is in ``argv`` or ``EFFICIENTVLM_DEBUG`` is set to a true value."""
    flag = os.environ.get("EFFICIENTVLM_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")
    return flag or DEBUG_FLAG in (argv or ())


def format_user_error(prog: str, error: BaseException) -> str:
    """``prog: error: <message> (--debug shows the traceback)``."""
    message = str(error) or type(error).__name__
    if isinstance(error, KeyError):  # str() of a KeyError is the repr of its key
        message = f"{type(error).__name__}: {message}"
    return f"{prog}: error: {message} ({DEBUG_FLAG} shows the traceback)"


def run_script(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run an example script's ``main(argv)``: a user mistake prints one error message and returns 2.

    ``--debug`` is taken out of ``argv`` before ``main`` sees it (``HfArgumentParser`` does not know it) and lets the
    traceback through. ``main``'s return value is the exit status when it is an int, else 0.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    argv = [arg for arg in argv if arg != DEBUG_FLAG]
    prog = prog or Path(sys.argv[0]).name
    try:
        result = main(argv)
    except USER_ERRORS as error:
        if debug:
            raise
        print(format_user_error(prog, error), file=sys.stderr)
        return USER_ERROR_STATUS
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def check_checkpoint_argument(name_or_path: str, flag: str) -> None:
    """Check a ``--model``-style argument before transformers does: an existing checkpoint folder, or a Hub id.

    transformers reports a missing local folder as an invalid repository id (``Repo id must be in the form ...``);
    this says what is wrong with the argument instead.

    Raises:
        FileNotFoundError: ``name_or_path`` looks like a path (absolute, ``./``, ``~``, ``..``, more separators than
            a Hub id has) or is not a valid Hub id, and no such folder exists; or the folder has no ``config.json``.
            A valid Hub id is left to transformers (it may be in the local cache).
        ValueError: ``name_or_path`` is a file, not a folder.
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    path = Path(name_or_path).expanduser()
    fix = "Pass a checkpoint folder written by save_pretrained() or a Hub id such as org/name."
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{flag} {name_or_path}: the folder has no config.json, so it is not a saved "
                                    f"model. {fix}")
        return
    if path.exists():
        raise ValueError(f"{flag} {name_or_path} is a file; pass the folder that holds the checkpoint.")
    looks_like_path = (os.path.isabs(name_or_path) or name_or_path.startswith(("./", "../", "~", ".\\"))
                       or "\\" in name_or_path or name_or_path.count("/") > 1)
    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        looks_like_path = True
    if looks_like_path:
        raise FileNotFoundError(f"{flag} {name_or_path}: no such folder (resolved as '{path.absolute()}'), and not "
                                f"a Hub id. {fix}")


__all__ = [
    "DEBUG_FLAG",
    "USER_ERRORS",
    "USER_ERROR_STATUS",
    "check_checkpoint_argument",
    "debug_requested",
    "format_user_error",
    "run_script",
]
