"""Errors of the SIP core."""


class ParseError(ValueError):
    """Bytes that are not a well-formed SIP message (RFC 3261 §25); the text says what was wrong.

    ``status`` is the response a server should send for a request that failed
    this way: 400 almost always, 505 for an unsupported SIP version (§8.2.2).
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
