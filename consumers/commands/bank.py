"""`moderation bank ...`: known-content banks of PDQ hashes (create, add image files, import a hash CSV,
list, disable and enable, remove entries, export); every change is in the console's audit log."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from consumers.commands.console import _who
from consumers.errors import CommandError, ExitCode
from consumers.settings import Settings


@contextmanager
def _banks(settings: Settings) -> Iterator[Any]:
    from moderation.storage import open_engine
    from moderation.storage.banks import BankError, BankStore

    with open_engine(settings.database_url, require_schema=True) as engine:
        try:
            yield BankStore(engine)
        except BankError as exc:
            raise CommandError.user(str(exc)) from exc


def cmd_create(args: argparse.Namespace, settings: Settings) -> int:
    with _banks(settings) as banks:
        bank = banks.create(args.name, args.action, args.category, max_distance=args.distance, by=_who())
    print(f"bank {bank.name}: {bank.action}, category {bank.category}, match distance {bank.max_distance}")
    return ExitCode.OK


def cmd_add(args: argparse.Namespace, settings: Settings) -> int:
    """Hash image files as the workers hash uploads and add them; files too flat to match are refused."""
    from moderation.exceptions import ImageLoadError
    from moderation.images import load_bytes
    from moderation.storage.banks import NewEntry

    limits = settings.images.model_copy(update={"pdq": True})
    entries, refused = [], 0
    for path in args.files:
        try:
            loaded = load_bytes(Path(path).read_bytes(), limits)
        except OSError as exc:
            print(f"skipped {path}: cannot read it: {exc.strerror or exc}", file=sys.stderr)
            refused += 1
            continue
        except ImageLoadError as exc:
            print(f"skipped {path}: {exc.reason}: {exc.detail}", file=sys.stderr)
            refused += 1
            continue
        if loaded.pdq is None or not loaded.pdq.matchable:
            quality = loaded.pdq.quality if loaded.pdq is not None else "none"
            print(f"skipped {path}: too flat to match (PDQ quality {quality}, at least 50 needed)", file=sys.stderr)
            refused += 1
            continue
        entries.append(NewEntry(loaded.pdq.hex, args.label or Path(path).name, args.source))
    if not entries:
        raise CommandError(f"no file could be added ({refused} skipped)")
    with _banks(settings) as banks:
        result = banks.add(args.name, entries, by=_who())
    print(f"bank {args.name}: {result.added} added, {result.already} already there, {refused} files skipped")
    return ExitCode.OK if not refused else ExitCode.FAILED


def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    from moderation.bank_files import read_hash_csv
    from moderation.storage.banks import BankError

    try:
        hashes = read_hash_csv(args.csv, source=args.source)
    except BankError as exc:
        raise CommandError.user(str(exc)) from exc
    with _banks(settings) as banks:
        result = banks.add(args.name, hashes.entries, by=_who())
    skipped = f", {hashes.low_quality} skipped as too flat to match (quality under 50)" if hashes.low_quality else ""
    print(f"bank {args.name}: {result.added} added, {result.already} already there{skipped}")
    return ExitCode.OK


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    with _banks(settings) as banks:
        if args.name is None:
            print("name\taction\tcategory\tdistance\tstate\tentries\tdisabled")
            for bank in banks.all():
                state = "enabled" if bank.enabled else "disabled"
                print(f"{bank.name}\t{bank.action}\t{bank.category}\t{bank.max_distance}\t{state}\t"
                      f"{bank.entries}\t{bank.disabled}")
            return ExitCode.OK
        print("pdq_hash\tstate\tlabel\tsource\tadded_by\tadded_at")
        for entry in banks.entries(args.name):
            state = "enabled" if entry.enabled else "disabled"
            print(f"{entry.pdq_hash}\t{state}\t{entry.label}\t{entry.source}\t{entry.added_by}\t"
                  f"{entry.added_at.isoformat(timespec='seconds')}")
    return ExitCode.OK


def _switch(enabled: bool) -> Any:
    def handler(args: argparse.Namespace, settings: Settings) -> int:
        with _banks(settings) as banks:
            changed = banks.set_enabled(args.name, enabled, args.hash or (), by=_who())
        what = f"{changed} entries" if args.hash else "the bank"
        print(f"bank {args.name}: {what} {'enabled' if enabled else 'disabled'}"
              + ("" if changed or not args.hash else " (no entry changed)"))
        return ExitCode.OK
    return handler


def cmd_remove(args: argparse.Namespace, settings: Settings) -> int:
    with _banks(settings) as banks:
        removed = banks.remove(args.name, args.hash, by=_who())
    print(f"bank {args.name}: {removed} entries removed")
    return ExitCode.OK if removed else ExitCode.FAILED


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from moderation.bank_files import write_hash_csv

    with _banks(settings) as banks:
        text = write_hash_csv(banks.entries(args.name, include_disabled=args.include_disabled))
    if args.out is None:
        sys.stdout.write(text)
    else:
        try:
            Path(args.out).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"cannot write {args.out}: {exc.strerror or exc}") from exc
        print(f"wrote {text.count(chr(10)) - 1} hashes to {args.out}", file=sys.stderr)
    return ExitCode.OK


def _distance(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of bits") from None
    if not 0 <= value <= 128:
        raise argparse.ArgumentTypeError(f"{value} is not in 0-128 bits (PDQ recommends 31)")
    return value


def register(commands: Any) -> None:
    bank = commands.add_parser("bank", help="known-content banks of PDQ hashes, matched before the model")
    sub = bank.add_subparsers(dest="bank_command", required=True, metavar="SUBCOMMAND")
    create = sub.add_parser("create", help="create a bank")
    create.add_argument("name")
    create.add_argument("--action", choices=("block", "review"), required=True, help="what a match does")
    create.add_argument("--category", required=True, help="the verdict's category on a match (e.g. csam, nsfw)")
    create.add_argument("--distance", type=_distance, default=31, help="match distance in PDQ bits (default 31)")
    create.set_defaults(handler=cmd_create)
    add = sub.add_parser("add", help="hash image files and add them to a bank")
    add.add_argument("name")
    add.add_argument("files", nargs="+", type=Path)
    add.add_argument("--label", default="", help="a label for every entry (default: the file name)")
    add.add_argument("--source", default="", help="where they came from (a takedown, a program)")
    add.set_defaults(handler=cmd_add)
    imported = sub.add_parser("import", help="add the hashes of a CSV of hex PDQ hashes (ThreatExchange exports)")
    imported.add_argument("name")
    imported.add_argument("csv", type=Path)
    imported.add_argument("--source", default="", help="where they came from, for entries without a source column")
    imported.set_defaults(handler=cmd_import)
    listed = sub.add_parser("list", help="the banks, or one bank's entries")
    listed.add_argument("name", nargs="?", default=None)
    listed.set_defaults(handler=cmd_list)
    for name, enabled in (("disable", False), ("enable", True)):
        switch = sub.add_parser(name, help=f"{name} a bank, or some of its entries (--hash)")
        switch.add_argument("name")
        switch.add_argument("--hash", action="append", default=None, help="an entry's hex PDQ hash (repeatable)")
        switch.set_defaults(handler=_switch(enabled))
    remove = sub.add_parser("remove", help="remove entries from a bank (they stop matching)")
    remove.add_argument("name")
    remove.add_argument("--hash", action="append", required=True, help="an entry's hex PDQ hash (repeatable)")
    remove.set_defaults(handler=cmd_remove)
    export = sub.add_parser("export", help="a bank's entries as CSV")
    export.add_argument("name")
    export.add_argument("--out", default=None, help="a file (default: stdout)")
    export.add_argument("--include-disabled", action="store_true", help="disabled entries too")
    export.set_defaults(handler=cmd_export)
