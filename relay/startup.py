"""The one error type every part may raise while starting (neutral: no part imports another for it)."""


class StartupError(Exception):
    """A part cannot start (bad credentials config, unusable directory, port in use); one-line reason."""
