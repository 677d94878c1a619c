"""ArgumentProblem: a fit argument that passes its type check but cannot work, named by its dotted config key."""

from __future__ import annotations


class ArgumentProblem(ValueError):
    """A value that cannot work; `key` is the dotted config key (e.g. data.prompt), `reason` says what is allowed."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f'Parser key "{key}": {reason}')
        self.key = key
        self.reason = reason
