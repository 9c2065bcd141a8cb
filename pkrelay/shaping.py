"""What a sink's `template` and `filter` make of an envelope.

`template`: a Jinja2 template in an immutable sandbox (no attribute writes, no
private or unsafe attributes), rendered with the envelope's keys as variables (and the
whole of it as `envelope`); its output is the request body. `filter`: a JMESPath
expression over the envelope; the sink gets the event only when it is truthy, as
JMESPath means it (null, false and empty strings, lists and objects are false; 0 is
true). Both are compiled once per process and checked when the config is loaded.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jinja2
import jmespath
import jmespath.exceptions
import jmespath.parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

_ENV = ImmutableSandboxedEnvironment(autoescape=False, keep_trailing_newline=False)


class RenderError(Exception):
    """A template that failed to render this envelope; the message names the error."""


@functools.lru_cache(maxsize=256)
def template(source: str) -> jinja2.Template:
    return _ENV.from_string(source)


@functools.lru_cache(maxsize=256)
def expression(source: str) -> jmespath.parser.ParsedResult:
    return jmespath.compile(source)


def problem(template_source: str, filter_source: str) -> str | None:
    """Why this template or filter cannot be used (for a config error), or None."""
    if template_source:
        try:
            template(template_source)
        except jinja2.TemplateSyntaxError as exc:
            return f"template: {exc.message} (line {exc.lineno})"
    if filter_source:
        try:
            expression(filter_source)
        except jmespath.exceptions.JMESPathError as exc:
            return f"filter: {exc}"
    return None


def render(source: str, envelope: Mapping[str, Any]) -> bytes:
    try:
        return template(source).render({**envelope, "envelope": envelope}).encode()
    except Exception as exc:  # a template's error is the delivery's, whatever it is
        raise RenderError(f"template: {type(exc).__name__}: {exc}") from None


def matches(source: str, envelope: Mapping[str, Any]) -> bool:
    """Whether the filter is truthy for this envelope; an expression that fails on it
    (a function given the wrong type) is not."""
    try:
        value = expression(source).search(envelope)
    except jmespath.exceptions.JMESPathError:
        return False
    if value is None or value is False:
        return False
    return not (isinstance(value, str | list | dict) and len(value) == 0)
