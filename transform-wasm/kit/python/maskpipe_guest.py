"""The guest toolkit for transforms written in Python: what every maskpipe
transform needs, and nothing about any feed's messages. It is the Python
twin of the Rust kit (transform-wasm/kit, crate maskpipe-guest).

A transform is a subclass of `Transformer` named `WitWorld` (the name
componentize-py looks for) with two methods:

    from maskpipe_guest import Reject, Transformer, masked, table, text

    class WitWorld(Transformer):
        TABLES = [table("emails", text("masked_email", 256, pii="email"))]
        REASON_CODES = ["empty_body"]

        def transform(self, body, sent_timestamp_ms, rows):
            if not body:
                raise Reject("empty_body", "the body is empty")
            rows.add(0, masked(body))   # table 0, one value per column

`TABLES` declares the tables the transform writes (a row's table is its
index there) and `REASON_CODES` every code its rejections carry.
`transform` turns one body into rows with `rows.add`, or raises `Reject`.
Everything else is the kit's:

* the packed batch (one string of bodies, their byte offsets) is cut into
  bodies; offsets that do not fit are a `malformed_batch` rejection;
* rows go out packed as the contract wants (wit/transform.wit): their
  strings back to back in one text, each value as a kind and a 64-bit
  word, encoded by its declared column's type (`Rows.add` documents which
  Python value each type takes; a PII column takes `masked(..)`,
  `pseudonymized(..)` or `clear(..)`: the host, which holds the key, does
  the protecting);
* a message that raises takes back the rows it added: `Reject` becomes its
  rejection; any other exception (`sys.exit()` too) is a bug, and becomes
  `transform_error` naming only the exception's type (its text could quote
  the message), so one bad message never costs the batch; `rows.add` checks
  every value against its column's type and range for the same reason;
* `load_json` parses a body or rejects it, refusing first what CPython's
  parser would exhaust the component's stack on (`nests_deeper_than`).

The kit checks nothing the host checks: the host validates every row
against the declaration and turns what breaks it into that message's dead
letter.
"""

import datetime
import json
import math
import re
import struct
from itertools import accumulate

from wit_world.imports import types as wit

__all__ = [
    "ANY",
    "CLEAR",
    "MALFORMED_BATCH",
    "JSON_NESTING_LIMIT",
    "MASKED",
    "PSEUDONYMIZED",
    "TRANSFORM_ERROR",
    "Reject",
    "Rows",
    "Transformer",
    "bigint",
    "boolean",
    "clear",
    "date",
    "double",
    "integer",
    "jsonb",
    "load_json",
    "masked",
    "nests_deeper_than",
    "numeric",
    "pseudonymized",
    "table",
    "text",
    "timestamptz",
    "uuid",
]

#: The code of a message whose offsets or timestamp do not fit the batch.
MALFORMED_BATCH = "malformed_batch"
#: The code of a message whose transform raised something other than Reject.
TRANSFORM_ERROR = "transform_error"

MASKED = wit.Protections.MASKED
PSEUDONYMIZED = wit.Protections.PSEUDONYMIZED
CLEAR = wit.Protections.CLEAR
#: Every protection: the column takes whichever the transform asks for.
ANY = MASKED | PSEUDONYMIZED | CLEAR


class Reject(Exception):
    """Why a message cannot become rows. `code` must be one of the
    transform's REASON_CODES; `detail` should name fields, never values (the
    host seals it, but it is still best kept free of PII)."""

    def __init__(self, code, detail):
        super().__init__(code)
        self.code = code
        self.detail = detail


# ------------------------------------------------------------- parsing JSON

#: How deep `json.loads` may be allowed to recurse inside a component.
#: CPython's JSON parser recurses in C once per level, and a component's
#: stack is small: at 2,000 levels it runs out, which traps the call (the
#: host then costs that message a `transform_trap` dead letter, but only
#: after retrying its batch one message at a time).
JSON_NESTING_LIMIT = 500

# A string (escapes already removed), or an unterminated one to the end:
# one character class, so the scan is linear and needs no memory per
# character (a repeated group would: a megabyte of escapes hit the cap).
_STRING = re.compile(r'"[^"]*"?')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}.__getitem__


def nests_deeper_than(text, limit=JSON_NESTING_LIMIT):
    """Whether the JSON `text` nests arrays and objects deeper than `limit`
    (brackets inside strings do not count). Ask before `json.loads` on a
    body that could be hostile; it costs two counts unless the text holds
    more than `limit` brackets, and then runs at C speed."""
    if text.count("[") + text.count("{") <= limit:
        return False
    # Escapes first (an escaped backslash, then an escaped quote), so that
    # every quote left opens or closes a string.
    unescaped = text.replace("\\\\", "").replace('\\"', "")
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", unescaped))
    return max(accumulate(map(_DEPTH_STEP, brackets)), default=0) > limit


def _not_json(constant):
    raise ValueError(f"{constant} is not JSON")


# Python's decoder, strict: NaN and Infinity are not JSON. (Integers longer
# than CPython's 4,300 digits stay refused: converting them is quadratic.)
_DECODER = json.JSONDecoder(parse_constant=_not_json)


def load_json(body, code="invalid_json", decoder=None):
    """`body` parsed as JSON (by `decoder`, a `json.JSONDecoder`, if given),
    or `Reject(code, …)`: it is not JSON (NaN and Infinity are not), holds
    what the decoder refuses (an integer of more than 4,300 digits), or
    nests deeper than JSON_NESTING_LIMIT. The detail names a position,
    never the text."""
    if nests_deeper_than(body):
        raise Reject(code, f"body nests deeper than {JSON_NESTING_LIMIT} levels")
    try:
        return (decoder or _DECODER).decode(body)
    except json.JSONDecodeError as error:
        raise Reject(
            code, f"body is not valid JSON (line {error.lineno} column {error.colno})"
        ) from None
    except (ValueError, RecursionError):
        raise Reject(code, "body holds JSON this transform cannot read") from None


# ---------------------------------------------------------------- declaring


def _column(name, column_type, nullable, pii=None, allows=ANY):
    return wit.Column(
        name,
        column_type,
        nullable,
        None if pii is None else wit.Pii(pii, allows),
    )


def text(name, max_chars, *, nullable=True, pii=None, allows=ANY):
    """`varchar(max_chars)`. With `pii="field"`, a PII column holding the
    message field `field`, protected in one of the ways `allows`."""
    return _column(name, wit.ColumnType_Text(max_chars), nullable, pii, allows)


def integer(name, *, nullable=True):
    return _column(name, wit.ColumnType_Integer(), nullable)


def bigint(name, *, nullable=True):
    return _column(name, wit.ColumnType_Bigint(), nullable)


def boolean(name, *, nullable=True):
    return _column(name, wit.ColumnType_Boolean(), nullable)


def double(name, *, nullable=True):
    return _column(name, wit.ColumnType_Double(), nullable)


def numeric(name, *, nullable=True):
    return _column(name, wit.ColumnType_Numeric(), nullable)


def date(name, *, nullable=True):
    return _column(name, wit.ColumnType_Date(), nullable)


def timestamptz(name, *, nullable=True):
    return _column(name, wit.ColumnType_Timestamptz(), nullable)


def uuid(name, *, nullable=True):
    return _column(name, wit.ColumnType_Uuid(), nullable)


def jsonb(name, *, nullable=True):
    return _column(name, wit.ColumnType_Jsonb(), nullable)


def table(name, *columns):
    return wit.Table(name, list(columns))


# ------------------------------------------------------------ PII values

_NULL = 0
_TEXT = 1
_INTEGER = 2
_BIGINT = 3
_BOOLEAN = 4
_DOUBLE = 5
_NUMERIC = 6
_DATE = 7
_TIMESTAMPTZ = 8
_UUID = 9
_JSONB = 10
_MASKED = 11
_PSEUDONYMIZED = 12
_CLEAR = 13


class _Protected:
    """A PII value and how the host is to store it."""

    __slots__ = ("kind", "value")

    def __init__(self, kind, value):
        self.kind = kind
        self.value = value

    def __repr__(self):
        # Never the value: a repr ends up in tracebacks.
        return "<PII value>"


def masked(value):
    """PII, masked by the host: keyed, deterministic and reversible."""
    return _Protected(_MASKED, value)


def pseudonymized(value):
    """PII, replaced by the host with a keyed, irreversible pseudonym."""
    return _Protected(_PSEUDONYMIZED, value)


def clear(value):
    """PII stored as is: the transform has already made it harmless."""
    return _Protected(_CLEAR, value)


# ---------------------------------------------------------------- rows

# How a column's values are encoded, by the column type's class.
_TEXT_LIKE = {
    wit.ColumnType_Text: _TEXT,
    wit.ColumnType_Numeric: _NUMERIC,
    wit.ColumnType_Uuid: _UUID,
    wit.ColumnType_Jsonb: _JSONB,
}
_SCALAR = {
    wit.ColumnType_Integer: _INTEGER,
    wit.ColumnType_Bigint: _BIGINT,
    wit.ColumnType_Boolean: _BOOLEAN,
    wit.ColumnType_Double: _DOUBLE,
    wit.ColumnType_Date: _DATE,
    wit.ColumnType_Timestamptz: _TIMESTAMPTZ,
}
_PII = -1
# The kinds whose word is a span of the text.
_SPANS = frozenset((_TEXT, _NUMERIC, _UUID, _JSONB))
_U64 = (1 << 64) - 1
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_DOUBLE_BITS = struct.Struct("<d")
_WORD = struct.Struct("<Q")


def _encoding(column):
    if column.pii is not None:
        return _PII
    kind = _TEXT_LIKE.get(type(column.type))
    if kind is None:
        kind = _SCALAR[type(column.type)]
    return kind


_I32 = (-(1 << 31), (1 << 31) - 1)
_I64 = (-(1 << 63), (1 << 63) - 1)


def _int_in(value, bounds, column_type):
    if type(value) is not int:
        raise TypeError(f"a {column_type} column takes an int")
    if not bounds[0] <= value <= bounds[1]:
        raise OverflowError(f"a value out of the {column_type} range")
    return value


def _days_in_month(year, month):
    if month == 2:
        leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        return 29 if leap else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _scalar_word(kind, value):
    """The word of a non-text value, checked: a value of the wrong type,
    out of its type's range, not finite or not a calendar date raises
    (costing its message a `transform_error`), never a word the boundary
    would refuse for the whole batch. What only the host knows (a date or
    timestamp PostgreSQL cannot store) the host checks."""
    if kind == _INTEGER:
        return _int_in(value, _I32, "integer") & 0xFFFF_FFFF
    if kind == _BIGINT:
        return _int_in(value, _I64, "bigint") & _U64
    if kind == _BOOLEAN:
        if type(value) is not bool:
            raise TypeError("a boolean column takes a bool")
        return 1 if value else 0
    if kind == _DOUBLE:
        if type(value) not in (float, int):
            raise TypeError("a double column takes a float")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError("a double column takes a finite float")
        return _WORD.unpack(_DOUBLE_BITS.pack(value))[0]
    if kind == _DATE:
        # A datetime.date, or (year, month, day) for years it cannot hold.
        if isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
            year, month, day = value.year, value.month, value.day
        elif type(value) is tuple and len(value) == 3:
            year, month, day = value
            _int_in(year, _I32, "date's year")
            if type(month) is not int or type(day) is not int or not (
                1 <= month <= 12 and 1 <= day <= _days_in_month(year, month)
            ):
                raise ValueError("a date's month or day is not in the calendar")
        else:
            raise TypeError("a date column takes a datetime.date or (year, month, day)")
        return (year & 0xFFFF_FFFF) | (month << 32) | (day << 40)
    # timestamptz: an aware datetime, or microseconds since the epoch.
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            raise ValueError("a timestamptz column takes an aware datetime")
        delta = value - _EPOCH
        value = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return _int_in(value, _I64, "timestamptz") & _U64


class Rows:
    """The rows of one batch, packed as the contract wants them."""

    def __init__(self, encodings):
        self._encodings = encodings
        self._text = []
        self._text_bytes = 0
        self.tables = bytearray()
        self.kinds = bytearray()
        self.words = []

    def add(self, table, *values):
        """Adds a row to the declared table at index `table`: one value per
        column, in declared order. `None` is NULL; a text, numeric, uuid or
        jsonb column takes a `str`; integer and bigint an `int`; boolean a
        `bool`; double a `float`; date a `datetime.date` or a (year, month,
        day) tuple; timestamptz an aware `datetime` or an `int` of
        microseconds since the epoch; a PII column `masked(str)`,
        `pseudonymized(str)` or `clear(str)`."""
        if type(table) is not int or not 0 <= table < len(self._encodings):
            raise IndexError("a row's table is the index of a declared table")
        encodings = self._encodings[table]
        if len(values) != len(encodings):
            raise TypeError("a row needs one value per declared column")
        # All or nothing: a value that raises takes the row's others back,
        # so a transform that catches the error still has aligned rows.
        mark = self._mark()
        try:
            self._append(encodings, values)
        except BaseException:
            self._rewind(mark)
            raise
        self.tables.append(table)

    def _append(self, encodings, values):
        kinds = self.kinds
        words = self.words
        for encoding, value in zip(encodings, values):
            if value is None:
                kinds.append(_NULL)
                words.append(0)
                continue
            if encoding == _PII:
                if type(value) is not _Protected:
                    raise TypeError(
                        "a PII column takes masked(..), pseudonymized(..) or clear(..)"
                    )
                kind = value.kind
                value = value.value
            elif encoding in _SPANS:
                kind = encoding
            else:
                kinds.append(encoding)
                words.append(_scalar_word(encoding, value))
                continue
            if type(value) is not str:
                raise TypeError("a text, numeric, uuid, jsonb or PII column takes a str")
            # A span of the text: byte offsets, as the host reads them
            # (encoding raises for a string the boundary cannot carry: an
            # unpaired surrogate).
            start = self._text_bytes
            end = start + (len(value) if value.isascii() else len(value.encode()))
            self._text.append(value)
            self._text_bytes = end
            kinds.append(kind)
            words.append(start | (end << 32))

    def _mark(self):
        return len(self.tables), len(self.words), len(self._text), self._text_bytes

    def _rewind(self, mark):
        tables, values, texts, text_bytes = mark
        del self.tables[tables:]
        del self.kinds[values:]
        del self.words[values:]
        del self._text[texts:]
        self._text_bytes = text_bytes


# ---------------------------------------------------------------- export


class Transformer:
    """The base of a transform: set TABLES and REASON_CODES, write
    `transform`. It implements the contract's `describe` and
    `transform-batch` exports."""

    TABLES = []
    REASON_CODES = []

    def transform(self, body, sent_timestamp_ms, rows):
        """Turns one message body into rows (`rows.add`), or raises Reject."""
        raise NotImplementedError

    def describe(self):
        codes = list(self.REASON_CODES)
        for code in (MALFORMED_BATCH, TRANSFORM_ERROR):
            if code not in codes:
                codes.append(code)
        return wit.Declaration(list(self.TABLES), codes)

    def transform_batch(self, batch):
        encodings = self.__dict__.get("_encodings")
        if encodings is None:
            encodings = [
                [_encoding(column) for column in declared.columns]
                for declared in self.TABLES
            ]
            self._encodings = encodings
        rows = Rows(encodings)
        each = []
        bodies = batch.bodies
        timestamps = batch.sent_timestamps_ms
        # Offsets are in bytes: plain indexes when every character is one.
        encoded = None if bodies.isascii() else bodies.encode()
        size = len(bodies) if encoded is None else len(encoded)
        transform = self.transform
        start = 0
        for index, end in enumerate(batch.body_ends):
            body = None
            if start <= end <= size and index < len(timestamps):
                if encoded is None:
                    body = bodies[start:end]
                else:
                    try:
                        body = encoded[start:end].decode()
                    except UnicodeDecodeError:
                        pass
            start = end
            if body is None:
                each.append(_rejected(
                    MALFORMED_BATCH,
                    "the host sent a batch whose offsets or timestamps do not fit its bodies",
                ))
                continue
            mark = rows._mark()
            try:
                transform(body, timestamps[index], rows)
            except Reject as rejection:
                rows._rewind(mark)
                each.append(_rejected(rejection.code, rejection.detail))
                continue
            except BaseException as error:
                # Anything else is a bug, sys.exit() included: it costs
                # this message alone.
                rows._rewind(mark)
                each.append(_rejected(
                    TRANSFORM_ERROR, f"the transform raised {type(error).__name__}"
                ))
                continue
            each.append(wit.Outcome_Rows(len(rows.tables) - mark[0]))
        return wit.Outcomes(
            "".join(rows._text), bytes(rows.tables), bytes(rows.kinds), rows.words, each
        )


def _rejected(code, detail):
    # A string the boundary cannot carry (an unpaired surrogate) would fail
    # the whole batch: replace what cannot be encoded instead.
    code, detail = str(code), str(detail)
    if not (code.isascii() and detail.isascii()):
        code = code.encode(errors="replace").decode()
        detail = detail.encode(errors="replace").decode()
    return wit.Outcome_Rejected(wit.Rejection(code, detail))
