"""The error for a result that cannot be right. Its own module so the CLI can catch it without pandas."""


class ResultError(ValueError):
    """A NaN or inf in a result: one line naming the field and the inputs it comes from."""
