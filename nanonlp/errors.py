"""The one exception type a user sees: a sentence saying what is wrong and how to fix it."""


class NanoNLPError(Exception):
    """A problem the user can act on. The CLI prints it without a traceback and exits 1."""

    exit_code = 1


class ConfigError(NanoNLPError):
    """A wrong config key, type or value. The CLI exits 2, as for a bad command line."""

    exit_code = 2
