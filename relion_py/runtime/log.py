"""Messages to the user on stderr, in RELION's wording where RELION prints one."""
import sys


def warn(message):
    """A warning that does not stop the program (RELION's ``Log::warn``)."""
    print(f" ! {message}", file=sys.stderr)


def info(message):
    print(f" ■ {message}", file=sys.stderr)
