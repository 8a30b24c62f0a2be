"""User-facing errors: one clear line (what, where, what to do), exit code 2."""


class UserError(ValueError):
    """Bad input from the user. The CLI prints ``harness-xai: <message>`` and exits with 2.

    Raise it *before* anything is written (store, report, results files), so a failed command
    leaves nothing half-written.
    """

    exit_code = 2
