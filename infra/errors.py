"""The one exception of infra/: a failure the person at the terminal can act on.

No Java, no Maven, a port taken, a broker that will not start: the CLIs print the message, which
says what to do, without a traceback.
"""


class BrokerError(RuntimeError):
    """A failure the user can act on; the CLI prints its message without a traceback."""
