"""Extension by import path: "package.module:function" named in a study file becomes the function it names.

A study file runs the code it names, as a conftest.py does: only run study files you trust. Modules are looked up
in the study file's folder first, then the working directory, then the installed packages.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from trainlib.errors import InvalidArgument

REFERENCE_FORM = "'package.module:function'"


def is_reference(value: str) -> bool:
    """True for an import path such as 'mymodels:tiny_cnn' (a registry name has no colon)."""
    return ":" in value


def resolve_reference(reference: str, key: str, search_dirs: Sequence[Path] = ()) -> Callable[..., Any]:
    """The callable ``reference`` ('package.module:function') names; ``key`` names the setting in messages.

    ``search_dirs`` (the study file's folder, then the working directory) go in front of sys.path for the import.
    """
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute or ":" in attribute:
        raise InvalidArgument(f"{key} {reference!r}: expected {REFERENCE_FORM}")
    _search_first(search_dirs)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        where = ", ".join(str(folder) for folder in search_dirs) or "the working directory"
        raise InvalidArgument(
            f"{key} {reference!r}: cannot import {module_name!r} ({error}); looked in {where}, then installed packages"
        ) from None
    except Exception as error:  # the user's module raised while being imported
        raise InvalidArgument(f"{key} {reference!r}: importing {module_name!r} raised {describe(error)}") from None
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            public = sorted(name for name, value in vars(module).items() if callable(value) and name[0] != "_")
            raise InvalidArgument(
                f"{key} {reference!r}: module {module_name!r} has no {attribute!r}"
                + (f"; it defines: {', '.join(public[:12])}" if public else "")
            )
        target = getattr(target, part)
    if not callable(target):
        raise InvalidArgument(f"{key} {reference!r}: {attribute!r} is a {type(target).__name__}, not a function")
    return target


def check_options(
    function: Callable[..., Any],
    key: str,
    reference: str,
    args: Iterable[Any],
    options: dict,
    given: Iterable[str] = (),
) -> None:
    """Raise InvalidArgument if ``function`` cannot be called with ``args`` and the keyword ``options``.

    ``given`` names keywords trainlib passes itself (not the user's options, so not listed as choices).
    """
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # a builtin without a signature: the call itself will tell
        return
    try:
        signature.bind(*args, **options)
    except TypeError as error:
        keywords = [
            name
            for name, parameter in signature.parameters.items()
            if parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD)
        ][len(tuple(args)) :]
        keywords = [name for name in keywords if name not in set(given)]
        unknown = sorted(set(options) - set(signature.parameters))
        if unknown:
            raise InvalidArgument(
                f"{key} {reference!r} does not take option {', '.join(map(repr, unknown))}; "
                f"it takes: {', '.join(keywords) or 'no options'}"
            ) from None
        raise InvalidArgument(f"{key} {reference!r} cannot be called with options {options}: {error}") from None


def describe(error: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _search_first(search_dirs: Sequence[Path]) -> None:
    for folder in reversed([str(Path(folder).resolve()) for folder in search_dirs]):
        if folder in sys.path:
            sys.path.remove(folder)
        sys.path.insert(0, folder)
