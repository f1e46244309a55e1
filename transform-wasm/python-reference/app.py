"""maskpipe's reference transform, in Python: the same policy as the Rust
reference (transform-wasm/src), giving the same rows for the same messages.

Validation and normalization are `login`'s (the Python twin of
login-core); this transform's policy is to have `ip` and `device_id`
masked reversibly by the host. Each valid message becomes one row of
`user_logins`. Built into a component by componentize-py (`just
build-transform`); the toolkit (`maskpipe_guest`, in transform-wasm/kit/python)
implements the contract's exports.
"""

import login
from maskpipe_guest import ANY, Transformer, date, integer, masked, table, text

# The take-home's table, column for column (see login-core's user_logins_columns).
USER_LOGINS = 0
TABLES = [
    table(
        "user_logins",
        text("user_id", login.USER_ID_MAX_CHARS),
        text("device_type", login.DEVICE_TYPE_MAX_CHARS),
        text("masked_ip", login.PROTECTED_MAX_CHARS, pii="ip", allows=ANY),
        text("masked_device_id", login.PROTECTED_MAX_CHARS, pii="device_id", allows=ANY),
        text("locale", login.LOCALE_MAX_CHARS),
        integer("app_version"),
        date("create_date"),
    )
]


class WitWorld(Transformer):
    TABLES = TABLES
    REASON_CODES = login.REASON_CODES

    def transform(self, body, sent_timestamp_ms, rows):
        user_id, device_type, ip, device_id, locale, version, created = login.login_row(
            body, sent_timestamp_ms
        )
        rows.add(
            USER_LOGINS,
            user_id,
            device_type,
            masked(ip),
            masked(device_id),
            locale,
            version,
            created,
        )
