"""``param_str`` of the project's Python layers: a JSON object over the layer's defaults.

One parser serves both the layer's ``setup`` (what Caffe runs) and ``abe.net.checks`` (the
pre-check the command lines run before Caffe sees a net), so a layer's parameters have one
definition. Errors are ``ValueError`` with a one-line message naming the layer class.
"""
import json
import math


def parse(param_str, defaults, layer, required=(), optional=()):
    """``defaults`` overridden by the JSON object in ``param_str``; keys of ``optional`` are
    accepted as given (absent: absent), for the layer to check.

    Refused: text that is not a JSON object, unknown keys (a typo is not silently ignored),
    a missing key of ``required``, and a value whose type differs from its default's (an
    integer is accepted where the default is a float; a bool is never a number).
    """
    try:
        given = json.loads(param_str) if param_str and param_str.strip() else {}
    except json.JSONDecodeError as error:
        raise ValueError(f"{layer} param_str is not JSON ({error.msg} at column {error.colno}): "
                         f"{param_str!r}") from None
    if not isinstance(given, dict):
        raise ValueError(f"{layer} param_str must be a JSON object, got {param_str!r}")
    known = set(defaults) | set(required) | set(optional)
    unknown = sorted(set(given) - known)
    if unknown:
        raise ValueError(f"{layer}: unknown param_str keys {unknown}; known: {sorted(known)}")
    missing = [key for key in required if key not in given]
    if missing:
        raise ValueError(f"{layer} param_str needs {', '.join(map(repr, missing))}")
    for key, value in given.items():
        if key in defaults and not same_kind(value, defaults[key]):
            raise ValueError(f"{layer} param_str: {key!r} must be {kind(defaults[key])}, "
                             f"got {value!r}")
    return {**defaults, **given}


def same_kind(value, default):
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, int):
        return isinstance(value, int)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and math.isfinite(value)
    if isinstance(default, list):
        return (isinstance(value, list) and len(value) == len(default)
                and all(same_kind(v, d) for v, d in zip(value, default)))
    return isinstance(value, type(default))


def kind(default):
    """What ``same_kind`` accepts for ``default``, in words."""
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, float):
        return "a finite number"
    if isinstance(default, list):
        return f"a list of {len(default)} numbers"
    return f"a {type(default).__name__}"


def require(ok, layer, message):
    """Raise the one-line ``ValueError`` of a parameter out of range."""
    if not ok:
        raise ValueError(f"{layer} param_str: {message}")
