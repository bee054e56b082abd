"""Hash lists to and from banks: CSV of hex PDQ hashes, as ThreatExchange's hash exports and HMA's bank
imports write them (a hash per line, optionally with a header and label, source or quality columns).

Reading refuses a file with any malformed line, naming each (up to ten): a bank is all or nothing, so a
half-imported list never leaves an operator guessing which hashes made it in.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from moderation.perceptual import MIN_MATCH_QUALITY, parse_pdq
from moderation.storage.banks import BankEntry, BankError, NewEntry

_HASH_COLUMNS = ("pdq", "pdq_hash", "hash", "signal_value", "hash_value", "value")
_LABEL_COLUMNS = ("label", "tags", "description", "name")
_SOURCE_COLUMNS = ("source", "owner", "origin")
_SHOWN_ERRORS = 10


@dataclass(frozen=True)
class HashList:
    entries: list[NewEntry]
    low_quality: int  # rows skipped: their quality column says the hash is too flat to match


def read_hash_csv(path: Path, source: str = "") -> HashList:
    """The hashes of a CSV file; BankError naming the file and each bad line otherwise."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise BankError(f"{path}: cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    rows = [(number, row) for number, row in enumerate(csv.reader(io.StringIO(text)), start=1)
            if row and any(cell.strip() for cell in row) and not row[0].lstrip().startswith("#")]
    if not rows:
        raise BankError(f"{path}: no hashes")
    columns = {"hash": 0, "label": 1, "source": None, "quality": None}
    first_number, first = rows[0]
    if not _is_hash(first[0]):
        header = [cell.strip().lower() for cell in first]
        found = next((header.index(name) for name in _HASH_COLUMNS if name in header), None)
        if found is None:
            raise BankError(f"{path}, line {first_number}: neither a PDQ hash nor a header naming a hash column "
                            f"({', '.join(_HASH_COLUMNS)})")
        columns = {
            "hash": found,
            "label": next((header.index(n) for n in _LABEL_COLUMNS if n in header), None),
            "source": next((header.index(n) for n in _SOURCE_COLUMNS if n in header), None),
            "quality": header.index("quality") if "quality" in header else None,
        }
        rows = rows[1:]
    entries, problems, low = [], [], 0
    for number, row in rows:
        def cell(name: str, row: list[str] = row) -> str:
            index = columns[name]
            return row[index].strip() if index is not None and index < len(row) else ""

        try:
            value = parse_pdq(cell("hash")).hex()
        except ValueError as exc:
            problems.append(f"line {number}: {exc}")
            continue
        quality = cell("quality")
        if quality:
            try:
                if int(float(quality)) < MIN_MATCH_QUALITY:
                    low += 1
                    continue
            except ValueError:
                problems.append(f"line {number}: quality {quality!r} is not a number")
                continue
        entries.append(NewEntry(value, cell("label"), cell("source") or source))
    if problems:
        more = f" (and {len(problems) - _SHOWN_ERRORS} more)" if len(problems) > _SHOWN_ERRORS else ""
        raise BankError(f"{path}: {len(problems)} malformed lines, nothing imported: "
                        + "; ".join(problems[:_SHOWN_ERRORS]) + more)
    return HashList(entries, low)


def _is_hash(text: str) -> bool:
    try:
        parse_pdq(text)
    except ValueError:
        return False
    return True


def write_hash_csv(entries: list[BankEntry]) -> str:
    """A bank's entries as CSV with a header (`pdq_hash,label,source,added_by,added_at,enabled`): what
    `read_hash_csv` and other tools read back."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["pdq_hash", "label", "source", "added_by", "added_at", "enabled"])
    for entry in entries:
        writer.writerow([entry.pdq_hash, entry.label, entry.source, entry.added_by,
                         entry.added_at.isoformat(timespec="seconds"), str(entry.enabled).lower()])
    return out.getvalue()
