"""Validation and normalization of one Fetch login message: the Python twin
of the Rust reference's login-core (transform-wasm/core), rule for rule, so
the two references give the same rows and the same reason codes (the
golden vectors in transform-wasm/vectors.jsonl hold both to it).

Where Python's own parsers are looser than Rust's, this module is strict
on purpose: JSON numbers out of a double's range and unpaired surrogate
escapes are invalid JSON (as serde_json says), an IP address is parsed by
Rust's grammar (no zone ids, no leading zeros), and dates beyond Python's
year 9999 are computed, not refused. One difference remains: JSON nested
deeper than the kit's JSON_NESTING_LIMIT (500 levels) is invalid here,
because CPython's parser would exhaust the component's stack, where the
Rust reference skips deep nesting inside fields it ignores (and names the
kind of a deep login field or body).
"""

import json

from maskpipe_guest import Reject, load_json

REASON_CODES = [
    "invalid_json",
    "not_an_object",
    "wrong_schema",
    "missing_field",
    "null_field",
    "wrong_type",
    "invalid_ip",
    "invalid_app_version",
    "value_too_long",
    "invalid_timestamp",
]

USER_ID_MAX_CHARS = 128
DEVICE_TYPE_MAX_CHARS = 32
LOCALE_MAX_CHARS = 32
# 128 bytes of plaintext mask to at most 229 characters: inside varchar(256).
MASKED_INPUT_MAX_BYTES = 128
PROTECTED_MAX_CHARS = 256

LOGIN_FIELDS = ("user_id", "device_type", "ip", "device_id", "app_version")


# ------------------------------------------------------------------- JSON


class _Number:
    """A JSON number: its value is never needed, only whether serde_json
    would have read it (a double out of range it refuses)."""

    __slots__ = ("finite",)

    def __init__(self, finite):
        self.finite = finite


_FINITE = _Number(True)
_OUT_OF_RANGE = _Number(False)


def _number(text):
    value = float(text)
    # Far from a double's limit the two parsers agree; near it, serde_json's
    # own arithmetic decides.
    if -1e307 < value < 1e307:
        return _FINITE
    return _OUT_OF_RANGE if _serde_out_of_range(text) else _FINITE


_U64_MAX = (1 << 64) - 1
_I32_MAX = (1 << 31) - 1
_POW10 = [float(f"1e{exponent}") for exponent in range(309)]


def _serde_out_of_range(text):
    """Whether serde_json, as the Rust reference builds it (without
    `float_roundtrip`), refuses the JSON number `text` as out of range. It
    keeps the leading digits that fit a u64 (the integer part's others
    raise the exponent, the fraction's are dropped), then multiplies by a
    power of ten in doubles, which can overflow where CPython's correctly
    rounded parse gives the largest double."""
    at = 1 if text[0] == "-" else 0
    end = len(text)
    significand = exponent = 0
    long = False
    while at < end and "0" <= text[at] <= "9":
        digit = ord(text[at]) - 48
        if long or significand * 10 + digit > _U64_MAX:
            long = True
            exponent += 1
        else:
            significand = significand * 10 + digit
        at += 1
    if at < end and text[at] == ".":
        at += 1
        while at < end and "0" <= text[at] <= "9":
            digit = ord(text[at]) - 48
            if significand * 10 + digit > _U64_MAX:
                # The rest of the fraction is skipped.
                while at < end and "0" <= text[at] <= "9":
                    at += 1
                break
            significand = significand * 10 + digit
            exponent -= 1
            at += 1
    if at < end and text[at] in "eE":
        at += 1
        positive = text[at] != "-"
        if text[at] in "+-":
            at += 1
        power = 0
        while at < end and "0" <= text[at] <= "9":
            power = power * 10 + ord(text[at]) - 48
            if power > _I32_MAX:
                return significand != 0 and positive
            at += 1
        exponent = exponent + power if positive else exponent - power
        exponent = max(-(1 << 31), min(exponent, _I32_MAX))
    if exponent < 0:
        return False
    if exponent > 308:
        return significand != 0
    product = float(significand) * _POW10[exponent]
    return product - product != 0.0


def _constant(name):
    raise ValueError("NaN and Infinity are not JSON")


class _Object(list):
    """A JSON object as its (key, value) pairs, in order."""


_decoder = json.JSONDecoder(
    object_pairs_hook=_Object,
    parse_float=_number,
    parse_int=_number,
    parse_constant=_constant,
)


def _kind(value):
    if value is None:
        return "null"
    if value is True or value is False:
        return "boolean"
    if isinstance(value, _Number):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, _Object):
        return "object"
    return "array"


def _invalid_json(detail):
    return Reject("invalid_json", f"body is not valid JSON ({detail})")


def _unpaired_surrogate(text):
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


def parse(body):
    """The login fields of a body, as a dict from field to value (a str,
    None for JSON null, or some other JSON value): a repeated key keeps its
    last value."""
    top = load_json(body, decoder=_decoder)
    escapes = "\\u" in body
    if not isinstance(top, _Object):
        if top is _OUT_OF_RANGE or (escapes and isinstance(top, str) and _unpaired_surrogate(top)):
            raise _invalid_json("a value it cannot hold")
        raise Reject("not_an_object", f"body is JSON {_kind(top)}, not an object")
    login = {}
    for key, value in top:
        if escapes and _unpaired_surrogate(key):
            raise _invalid_json("an unpaired surrogate in a key")
        if key in LOGIN_FIELDS or key == "locale":
            if value is _OUT_OF_RANGE or (
                escapes
                and (
                    (isinstance(value, str) and _unpaired_surrogate(value))
                    # serde_json reads an object field's own keys as strings.
                    or (
                        isinstance(value, _Object)
                        and any(_unpaired_surrogate(inner) for inner, _ in value)
                    )
                )
            ):
                raise _invalid_json(f"field `{key}` holds a value it cannot hold")
            login[key] = value
    return login


# ------------------------------------------------------------------ fields

_MISSING = object()


def _required(login, field):
    value = login.get(field, _MISSING)
    if type(value) is str:
        return value
    if value is _MISSING:
        raise Reject("missing_field", f"required field `{field}` is missing")
    if value is None:
        raise Reject("null_field", f"required field `{field}` is null")
    raise _wrong_type(field, value)


def _optional(login, field):
    value = login.get(field)
    if value is None or type(value) is str:
        return value
    raise _wrong_type(field, value)


def _wrong_type(field, value):
    return Reject("wrong_type", f"field `{field}` is a JSON {_kind(value)}, not a string")


def _check_chars(field, text, limit):
    if len(text) > limit:
        raise Reject("value_too_long", f"field `{field}` is longer than {limit} characters")


# ---------------------------------------------------------------- versions

_DIGITS = "0123456789"


def parse_app_version(text):
    """`x`, `x.y` or `x.y.z` -> x*10000 + y*100 + z, each part one or two
    ASCII digits; None for anything else."""
    parts = text.split(".")
    if len(parts) > 3:
        return None
    version = 0
    for weight, part in zip((10_000, 100, 1), parts):
        if not 1 <= len(part) <= 2 or part[0] not in _DIGITS or part[-1] not in _DIGITS:
            return None
        version += weight * int(part)
    return version


# ---------------------------------------------------------------- dates

# chrono's last year: what the Rust reference can date.
_MAX_YEAR = 262_142
_I64_MAX = (1 << 63) - 1


def utc_date(timestamp_ms):
    """The UTC (year, month, day) of a millisecond Unix timestamp, or None
    beyond what the Rust reference can represent."""
    if timestamp_ms > _I64_MAX:
        return None
    # Howard Hinnant's days-to-civil, for any year.
    days = timestamp_ms // 86_400_000 + 719_468
    era = days // 146_097
    day_of_era = days - era * 146_097
    year_of_era = (
        day_of_era - day_of_era // 1460 + day_of_era // 36_524 - day_of_era // 146_096
    ) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    shifted_month = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * shifted_month + 2) // 5 + 1
    month = shifted_month + 3 if shifted_month < 10 else shifted_month - 9
    year = year_of_era + era * 400 + (1 if month <= 2 else 0)
    if year > _MAX_YEAR:
        return None
    return (year, month, day)


# ------------------------------------------------------------- addresses

_HEX = "0123456789abcdefABCDEF"


def _ipv4_octet(part):
    # One to three ASCII digits, no leading zero, at most 255.
    if not 1 <= len(part) <= 3:
        return None
    for digit in part:
        if digit not in _DIGITS:
            return None
    if len(part) > 1 and part[0] == "0":
        return None
    value = int(part)
    return value if value <= 255 else None


def _ipv4(text):
    parts = text.split(".")
    if len(parts) != 4:
        return None
    octets = [_ipv4_octet(part) for part in parts]
    return None if None in octets else octets


def _hex_group(part):
    if not 1 <= len(part) <= 4:
        return None
    for digit in part:
        if digit not in _HEX:
            return None
    return int(part, 16)


def _ipv6_groups(text, limit):
    """The 16-bit groups of `text` (no `::`), a trailing IPv4 address taking
    two; None when they do not parse or are more than `limit`."""
    if text == "":
        return []
    parts = text.split(":")
    groups = []
    for index, part in enumerate(parts):
        if index == len(parts) - 1 and "." in part:
            octets = _ipv4(part)
            if octets is None:
                return None
            groups += [octets[0] << 8 | octets[1], octets[2] << 8 | octets[3]]
        else:
            group = _hex_group(part)
            if group is None:
                return None
            groups.append(group)
    return groups if len(groups) <= limit else None


def _ipv6(text):
    """The eight groups of an IPv6 address, by Rust's grammar."""
    if "::" in text:
        head, _, tail = text.partition("::")
        head_groups = _ipv6_groups(head, 7)
        if head_groups is None or (head and "." in head):
            return None
        tail_groups = _ipv6_groups(tail, 7 - len(head_groups))
        if tail_groups is None:
            return None
        return head_groups + [0] * (8 - len(head_groups) - len(tail_groups)) + tail_groups
    groups = _ipv6_groups(text, 8)
    return groups if groups is not None and len(groups) == 8 else None


def _ipv6_text(groups):
    """An IPv6 address as Rust writes it (RFC 5952): lower-case hex, the
    longest run of two or more zero groups (the first of equals) as `::`,
    and an IPv4-mapped address in dotted form."""
    if groups[:6] == [0, 0, 0, 0, 0, 0xFFFF]:
        a, b = groups[6], groups[7]
        return f"::ffff:{a >> 8}.{a & 255}.{b >> 8}.{b & 255}"
    best_start, best_len, start, run = 0, 0, 0, 0
    for index, group in enumerate(groups):
        if group == 0:
            if run == 0:
                start = index
            run += 1
            if run > best_len:
                best_start, best_len = start, run
        else:
            run = 0
    if best_len > 1:
        head = ":".join(f"{group:x}" for group in groups[:best_start])
        tail = ":".join(f"{group:x}" for group in groups[best_start + best_len :])
        return f"{head}::{tail}"
    return ":".join(f"{group:x}" for group in groups)


def canonical_ip(text):
    """`text` in canonical form, or None if it is not an IPv4 or IPv6
    address. An IPv4 address that parsed is canonical already."""
    if _ipv4(text) is not None:
        return text
    groups = _ipv6(text)
    return None if groups is None else _ipv6_text(groups)


# --------------------------------------------------------------- the login


def login_row(body, sent_timestamp_ms):
    """One body as the values of a `user_logins` row, PII in the clear
    (the policy says how to protect it): (user_id, device_type, ip,
    device_id, locale, app_version, create_date). Raises Reject."""
    login = parse(body)
    if not any(field in login for field in LOGIN_FIELDS):
        raise Reject(
            "wrong_schema",
            "body has none of the login fields (user_id, device_type, ip, device_id, app_version)",
        )
    user_id = _required(login, "user_id")
    device_type = _required(login, "device_type")
    ip = _required(login, "ip")
    device_id = _required(login, "device_id")
    app_version = _required(login, "app_version")
    locale = _optional(login, "locale")

    _check_chars("user_id", user_id, USER_ID_MAX_CHARS)
    _check_chars("device_type", device_type, DEVICE_TYPE_MAX_CHARS)
    if locale is not None:
        _check_chars("locale", locale, LOCALE_MAX_CHARS)
    if len(device_id) > MASKED_INPUT_MAX_BYTES // 4 and len(device_id.encode()) > MASKED_INPUT_MAX_BYTES:
        raise Reject(
            "value_too_long", f"field `device_id` is longer than {MASKED_INPUT_MAX_BYTES} bytes"
        )
    canonical = canonical_ip(ip)
    if canonical is None:
        raise Reject("invalid_ip", "field `ip` is not an IPv4 or IPv6 address")
    version = parse_app_version(app_version)
    if version is None:
        raise Reject(
            "invalid_app_version",
            "field `app_version` is not a version x, x.y or x.y.z with parts 0-99",
        )
    create_date = utc_date(sent_timestamp_ms)
    if create_date is None:
        raise Reject(
            "invalid_timestamp", "SentTimestamp is outside the representable date range"
        )
    return user_id, device_type, canonical, device_id, locale, version, create_date
