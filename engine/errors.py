"""The one error type users see: a bad input, said in one line (CLI exit 2, UI st.error)."""


class UserError(Exception):
    """Bad input from a user: a one-line message that says what is wrong and what to do."""
