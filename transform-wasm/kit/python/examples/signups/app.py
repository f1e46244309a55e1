from maskpipe_guest import MASKED, Transformer, load_json, masked, table, text, timestamptz


class WitWorld(Transformer):
    TABLES = [
        table(
            "signups",
            text("country", 2, nullable=False),
            text("masked_email", 256, pii="email", allows=MASKED),
            timestamptz("signed_up_at"),
        )
    ]
    REASON_CODES = ["invalid_json"]

    def transform(self, body, sent_ms, rows):
        signup = load_json(body)  # or a Reject("invalid_json", …)
        rows.add(
            0,  # table 0 of the declaration; one value per column, in order
            signup.get("country", "??"),
            masked(signup.get("email", "")),
            sent_ms * 1000,
        )
