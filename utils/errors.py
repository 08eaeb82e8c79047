"""The project's error types. Every module may raise them, so this one imports
nothing of the project."""


class BlockDropError(Exception):
    """An expected failure (bad flag, missing or wrong file): the scripts print
    its message as one line and exit with status 2."""


class NonFinite(BlockDropError):
    """A loss, keep-probability or weight that is nan or infinite: training stops."""
