"""``embedmask configs``: the packaged config names, one per line (``--config-file`` takes them from anywhere)."""

from __future__ import annotations

from adet.config import list_configs


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    for name in list_configs():
        print(name)
