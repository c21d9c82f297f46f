"""Write the secrets docker-compose.yml requires into ``.env`` beside it (``make secrets``).

Each of ``SECRETS`` gets a random ``secrets.token_urlsafe`` value (URL-safe base64: no ``$``, quote
or space, so Compose reads it as it is). An existing ``.env`` is never overwritten: its lines stay
as they are, a name with an empty value gets one in place, missing names are appended, and a run
that has nothing to add leaves the file's contents alone. The file is written with mode 0600.
Standard library only, so it runs before the virtual environment exists::

    python3 deploy/make_secrets.py [PATH]      # default: .env beside docker-compose.yml
"""

from __future__ import annotations

import os
import re
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Callable, Sequence

__all__ = ["SECRETS", "write_secrets", "main"]

#: What docker-compose.yml requires with ``${NAME:?...}``.
SECRETS = ("RTREC_API_KEY", "RTREC_PS_TOKEN", "GRAFANA_ADMIN_PASSWORD")
DEFAULT_PATH = Path(__file__).resolve().parents[1] / ".env"
_ASSIGNMENT = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)$")


def _is_empty(value: str) -> bool:
    return value.strip() in {"", '""', "''"}


def _new_token() -> str:
    return secrets.token_urlsafe(32)


def write_secrets(path: Path, names: Sequence[str] = SECRETS,
                  new_token: Callable[[], str] = _new_token) -> list[str]:
    """Give every name in ``names`` a value in the env file ``path``, keeping the values it has;
    returns the names that got a new value (empty: the file's contents were left alone).

    >>> import tempfile
    >>> env = Path(tempfile.mkdtemp()) / ".env"
    >>> _ = env.write_text("RTREC_API_KEY=kept\\n")
    >>> write_secrets(env, new_token=lambda: "new")
    ['RTREC_PS_TOKEN', 'GRAFANA_ADMIN_PASSWORD']
    >>> print(env.read_text(), end="")
    RTREC_API_KEY=kept
    RTREC_PS_TOKEN=new
    GRAFANA_ADMIN_PASSWORD=new
    >>> write_secrets(env), oct(env.stat().st_mode & 0o777)
    ([], '0o600')
    """
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    added, seen = [], set()
    for n, line in enumerate(lines):
        match = _ASSIGNMENT.match(line)
        if match is None or match.group(1) not in names:
            continue
        name = match.group(1)
        seen.add(name)
        if _is_empty(match.group(2)) and name not in added:  # Compose's `:?` refuses an empty value too
            lines[n] = f"{name}={new_token()}"
            added.append(name)
    for name in names:
        if name not in seen:
            lines.append(f"{name}={new_token()}")
            added.append(name)
    if added:
        _write_private(path, "".join(f"{line}\n" for line in lines))
    elif path.exists():
        os.chmod(path, 0o600)
    return added


def _write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically; the file is 0600 from its creation on."""
    fd, tmp = tempfile.mkstemp(prefix=".env.", dir=path.parent)  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) > 1 or (args and args[0].startswith("-")):
        print("usage: make_secrets.py [PATH]   (default: .env beside docker-compose.yml)", file=sys.stderr)
        return 2
    path = Path(args[0]) if args else DEFAULT_PATH
    added = write_secrets(path)
    kept = [name for name in SECRETS if name not in added]
    print(f"{path}: " + "; ".join(part for part in (
        f"new {', '.join(added)}" if added else "", f"kept {', '.join(kept)}" if kept else "") if part)
        + " (mode 0600)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
