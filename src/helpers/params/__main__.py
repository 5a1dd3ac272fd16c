"""``python -m helpers.params check [PATH]`` | ``python -m helpers.params schema [OUT]``.

``check`` prints every error of a params file (default: params.yaml), one ``full.key.path: message`` line
each, and exits 1 when there is any (0 when valid, 2 for a usage error). ``schema`` writes the JSON Schema
of params.yaml to OUT (default: params.schema.json beside params.yaml), or to stdout with ``-``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from helpers.params import check_file, json_schema


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.params", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="validate a params file; print every error")
    check.add_argument("path", nargs="?", help="the params file (default: the project's params.yaml)")
    check.add_argument("--dvc", help="the dvc.yaml whose outputs may not exist yet (default: beside PATH)")
    check.add_argument("--no-files", action="store_true", help="skip the file-existence checks")
    schema = commands.add_parser("schema", help="write the JSON Schema of params.yaml")
    schema.add_argument("out", nargs="?", help="output file (default: params.schema.json; '-' for stdout)")
    args = parser.parse_args(argv)

    if args.command == "check":
        errors = check_file(args.path, dvc_file=args.dvc, files=not args.no_files)
        where = args.path or "params.yaml"
        if errors:
            print(f"{where}: {len(errors)} error(s)", file=sys.stderr)
            for line in errors:
                print(line, file=sys.stderr)
            return 1
        print(f"{where}: ok")
        return 0
    text = json_schema()
    if args.out == "-":
        sys.stdout.write(text)
        return 0
    if args.out is None:
        from helpers import paths

        out = paths.project_root() / "params.schema.json"
    else:
        out = Path(args.out)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
