"""`pkrelay init`: a commented starter pkrelay.toml, and a .gitignore beside it.

The starter is package data (starter.toml) with the system's name and mode filled in;
it asks for them only on a terminal, and never overwrites a file.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

# Beside a new pkrelay.toml: the secret files the README has people create, and the data.
GITIGNORE = "# pkrelay: secrets and data, never in git\npk-api-token\npk-signing-token\n*.token\ndata/\n"


def _ask(question: str, default: str, choices: tuple[str, ...] = ()) -> str:
    while True:
        answer = input(f"{question} [{default}]: ").strip() or default
        if not choices or answer in choices:
            return answer
        print(f"one of {', '.join(choices)}, please")


def write(path: Path, interactive: bool) -> Iterator[str]:
    """Write the starter config at `path` (FileExistsError if there is one) and a
    .gitignore beside it unless one exists; yields what to tell the user."""
    if path.exists():
        raise FileExistsError(path)
    name, mode = "home", "auto"
    if interactive:
        name = _ask("a name for your system (a local label)", name)
        mode = _ask("mode: auto (webhooks, and polling to catch what they miss), poll (no public URL needed) or "
                    "webhook", mode, ("auto", "poll", "webhook"))
    template = string.Template((resources.files("pkrelay") / "starter.toml").read_text())
    text = template.substitute(name=json.dumps(name), mode=json.dumps(mode))
    with path.open("x") as f:  # "x": never overwrite, even one created a moment ago
        f.write(text)
    yield f"wrote {path}; fill in the tokens, then `pkrelay check` and `pkrelay run`"
    ignore = path.parent / ".gitignore"
    try:
        with ignore.open("x") as f:
            f.write(GITIGNORE)
        yield f"wrote {ignore}: the token files and data/ stay out of git"
    except FileExistsError:
        yield f"{ignore} exists: add the token files (pk-api-token, pk-signing-token...) and data/ to it"
