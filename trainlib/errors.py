"""Errors a user can cause: one clear line, turned into exit code 2 by the CLI."""


class InvalidArgument(ValueError):
    """A bad value given by the user; the message names the value and the valid choices."""


def check_positive(name: str, value: float) -> None:
    """Raise InvalidArgument unless ``value`` is a positive number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InvalidArgument(f"{name} must be a positive number, got {value!r}")


def check_choice(kind: str, value: object, choices: "list[str] | tuple[str, ...]") -> None:
    """Raise InvalidArgument unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise InvalidArgument(f"unknown {kind} {value!r}; valid choices: {', '.join(choices)}")


def check_positive_int(name: str, value: object) -> None:
    """Raise InvalidArgument unless ``value`` is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidArgument(f"{name} must be a positive integer, got {value!r}")


def check_non_negative_int(name: str, value: object) -> None:
    """Raise InvalidArgument unless ``value`` is an integer of 0 or more."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(f"{name} must be an integer of 0 or more, got {value!r}")
