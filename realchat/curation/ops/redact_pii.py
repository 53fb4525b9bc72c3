"""redact_pii: replace personal data and secrets in turns by typed placeholders, or reject the conversation.

Real users paste their e-mail address, phone number, server IP, card number or API key into a chat.
A user simulator trained on those turns would learn to produce them, and a published dataset would
leak them. This op finds, in the turns of the roles it is given (user turns by default):

=================  ==========================  ==========================================================
kind               placeholder                 how it is found
=================  ==========================  ==========================================================
``email``          ``<EMAIL>``                 ``local@domain.tld``
``phone``          ``<PHONE>``                 candidates of 7+ digits, kept only when Google's
                                               libphonenumber (``phonenumbers``) says they are a *valid*
                                               number (with ``+CC`` or in ``phone_regions``); dates,
                                               times and version strings are refused by the library
``ip_address``     ``<IP_ADDRESS>``            IPv4 / IPv6 checked by :mod:`ipaddress`; only public
                                               (global) addresses by default, as datatrove does: 127.0.0.1
                                               and 192.168.x.x in code are not personal
``credit_card``    ``<CREDIT_CARD>``           13–19 digits (spaces or dashes allowed) with a card
                                               network's prefix and a valid Luhn check digit
``api_key``        ``<API_KEY>``               the documented prefixes of common providers (OpenAI,
                                               Anthropic, AWS, GitHub, GitLab, Slack, Google, Stripe,
                                               Hugging Face, SendGrid, npm), JWTs, ``Bearer`` tokens and
                                               PEM private-key blocks
``url_credentials``  ``<CREDENTIALS>``         the ``user:password@`` part of a URL
                                               (``postgres://<CREDENTIALS>@db:5432/app``)
=================  ==========================  ==========================================================

What it does not catch: names, postal addresses, dates of birth, national ids, secrets without a
known prefix (a random password in a config file), numbers written in words. Those need a trained NER
model (presidio with spaCy), which cannot be downloaded here; see the README.

``mode: redact`` rewrites the turns and keeps the conversation; ``mode: reject`` keeps turns as they
are and rejects every conversation with a finding (the detail names the turn and kinds). The
counters give the findings per kind, the turns changed and the conversations concerned.

Why Python and not a polars expression: the phone, IP and card checks are validators, not patterns.
A vectorised Rust-regex test first picks the turns that could hold anything at all, so most turns
never reach Python.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from functools import lru_cache
from typing import Literal

import polars as pl
from pydantic import Field

from realchat.curation.ops._text import explode_messages, implode_messages
from realchat.curation.ops.base import Filter, OpParams, OpResult

Kind = Literal["email", "phone", "ip_address", "credit_card", "api_key", "url_credentials"]
KINDS: tuple[str, ...] = ("url_credentials", "api_key", "email", "credit_card", "ip_address", "phone")
PLACEHOLDERS = {
    "email": "<EMAIL>", "phone": "<PHONE>", "ip_address": "<IP_ADDRESS>", "credit_card": "<CREDIT_CARD>",
    "api_key": "<API_KEY>", "url_credentials": "<CREDENTIALS>",
}

# Provider token formats, from each provider's documentation of its key prefixes.
_API_KEYS = [
    r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |PGP |ENCRYPTED )?PRIVATE KEY(?: BLOCK)?-----[\s\S]+?-----END (?:RSA |EC |DSA |OPENSSH |PGP |ENCRYPTED )?PRIVATE KEY(?: BLOCK)?-----",
    r"\bsk-(?:ant-(?:api|admin)\d{2}-|proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}",  # OpenAI, Anthropic
    r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b",  # AWS access key id
    r"\bgh[pousr]_[A-Za-z0-9]{36,255}\b",  # GitHub tokens
    r"\bgithub_pat_[A-Za-z0-9_]{22,255}\b",
    r"\bglpat-[A-Za-z0-9_-]{20,}\b",  # GitLab
    r"\bxox[abposr]-[A-Za-z0-9-]{10,}",  # Slack
    r"\bAIza[0-9A-Za-z_-]{35}\b",  # Google API key
    r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}\b",  # Stripe
    r"\bhf_[A-Za-z0-9]{30,}\b",  # Hugging Face
    r"\bSG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}\b",  # SendGrid
    r"\bnpm_[A-Za-z0-9]{36}\b",  # npm
    r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}",  # JWT
    r"(?<=\bBearer )[A-Za-z0-9._~+/-]{20,}=*",  # an HTTP bearer token
]
_PATTERNS = {
    "url_credentials": r"(?<=://)[^\s/:@'\"<>]+:[^\s/@'\"<>]+(?=@[\w.-])",
    "api_key": "|".join(f"(?:{p})" for p in _API_KEYS),
    "email": r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,24}\b",
    # one run of digits, or the groups printed on cards: 4-4-4-4(-3), Amex 4-6-5
    "credit_card": r"(?<![\w.,-])(?:\d{13,19}|\d{4}([ -])\d{4}\1\d{4}\1\d{1,7}|\d{4}([ -])\d{6}\2\d{5})(?![\w-]|[.,]\d)",
    "ip_address": r"(?<![\w.:])(?:(?:\d{1,3}\.){3}\d{1,3}|(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4})(?![\w.:])",
    # how people write numbers: +CC …, (NNN) NNN-NNNN, NNN-NNN-NNNN, 0NN NNNN NNNN; libphonenumber then
    # decides. Bare runs of digits without "+" or a leading 0 (ids, timestamps) are not candidates.
    "phone": (r"(?<![\w+./:-])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,5}){1,4}"
              r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}|\d{3}([.-])\d{3}\1\d{4}"
              r"|0\d{2,4}[ -]\d{3,4}[ -]?\d{3,4}|0\d{9,10})(?![\w/:-]|[.,]\d)"),
}
_COMPILED = {k: re.compile(v, re.ASCII) for k, v in _PATTERNS.items()}
# Cheap test (Rust regex, vectorised): a turn that matches none of these holds nothing to find.
_CANDIDATE = {
    "email": "@", "url_credentials": "://[^\\s/]*@", "credit_card": r"\d{4}", "phone": r"\d{3}",
    "ip_address": r"\d\.\d|:[0-9A-Fa-f]*:",
    "api_key": r"sk-|AKIA|ASIA|ABIA|ACCA|gh[pousr]_|github_pat_|glpat-|xox|AIza|_live_|_test_|hf_|SG\.|npm_|eyJ|Bearer |PRIVATE KEY",
}
# Card networks' leading digits (Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay, Maestro).
_CARD_PREFIX = re.compile(r"4|5[1-5]|2[2-7]|3[47]|6(?:011|5|4[4-9]|2)|35|3[0689]|5[06-9]")


class Params(OpParams):
    op: Literal["redact_pii"] = "redact_pii"
    #: What to look for (all kinds by default).
    kinds: list[Kind] = Field(default_factory=lambda: list(PLACEHOLDERS))  # type: ignore[arg-type]
    #: Turns of these roles are searched; add ``assistant`` to clean the answers too.
    roles: list[Literal["user", "assistant", "system"]] = ["user"]
    #: ``redact``: replace by placeholders and keep; ``reject``: reject conversations with any finding.
    mode: Literal["redact", "reject"] = "redact"
    #: Regions whose national numbers (written without ``+CC``) count as phone numbers.
    phone_regions: list[str] = ["US", "GB", "IN", "DE", "FR", "CN"]
    #: Only public IP addresses (private, loopback and documentation ranges are left alone).
    only_public_ips: bool = True


def luhn_ok(digits: str) -> bool:
    """The Luhn check digit test card numbers carry."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_ok(match: str) -> bool:
    digits = re.sub(r"[ -]", "", match)
    if not 13 <= len(digits) <= 19 or len(set(digits)) < 2:
        return False
    return bool(_CARD_PREFIX.match(digits)) and luhn_ok(digits)


def _ip_ok(match: str, only_public: bool) -> bool:
    try:
        ip = ipaddress.ip_address(match)
    except ValueError:
        return False
    if ip.version == 6 and match.count(":") < 3:  # "12:30:45"-like times are not addresses
        return False
    if ip.version == 4 and (all(len(part) == 1 for part in match.split(".")) or match.endswith(".0.0")):
        return False  # "1.1.2.3" and "110.0.0.0" read as section or version numbers

    return ip.is_global if only_public else not ip.is_unspecified


# Shapes that parse as numbers in some region but are dates.
_NOT_PHONE = re.compile(r"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}")


@lru_cache(maxsize=65536)
def _phone_ok(match: str, regions: tuple[str, ...]) -> bool:
    digits = sum(c.isdigit() for c in match)
    if digits < 7 or digits > 15 or _NOT_PHONE.fullmatch(match):
        return False
    import phonenumbers  # here: its import costs every command's start, and most never see a number

    for region in (None,) if match.startswith("+") else regions:
        try:
            number = phonenumbers.parse(match, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return True
    return False


class Redactor:
    """Finds spans of each kind in one text; the earlier kind in :data:`KINDS` wins an overlap."""

    def __init__(self, p: Params) -> None:
        self.kinds = [k for k in KINDS if k in p.kinds]
        self.regions = tuple(p.phone_regions)
        self.only_public = p.only_public_ips
        self.candidate = "|".join(f"(?:{_CANDIDATE[k]})" for k in self.kinds) or "$^"

    def _valid(self, kind: str, text: str) -> bool:
        if kind == "credit_card":
            return _card_ok(text)
        if kind == "ip_address":
            return _ip_ok(text, self.only_public)
        if kind == "phone":
            return _phone_ok(text, self.regions)
        return True

    def find(self, text: str) -> list[tuple[int, int, str]]:
        spans: list[tuple[int, int, str]] = []
        for kind in self.kinds:
            for m in _COMPILED[kind].finditer(text):
                s, e = m.span()
                if any(s < e2 and s2 < e for s2, e2, _ in spans) or not self._valid(kind, m.group()):
                    continue
                spans.append((s, e, kind))
        return sorted(spans)

    def redact(self, text: str) -> tuple[str, list[str]]:
        spans = self.find(text)
        if not spans:
            return text, []
        out, last = [], 0
        for s, e, kind in spans:
            out.append(text[last:s])
            out.append(PLACEHOLDERS[kind])
            last = e
        out.append(text[last:])
        return "".join(out), [k for _, _, k in spans]


class RedactPii(Filter):
    Params = Params

    def apply(self, table: pl.DataFrame) -> OpResult:
        p: Params = self.params  # type: ignore[assignment]
        red = Redactor(p)
        long = explode_messages(table).with_row_index("__i").with_columns(
            pl.int_range(pl.len()).over("__row").alias("__pos"))
        hit = long.filter(pl.col("role").is_in(list(p.roles)) & pl.col("content").is_not_null()
                          & pl.col("content").str.contains(red.candidate))
        found: Counter[str] = Counter()
        per_row: dict[int, list[str]] = {}
        new_text: list[str] = []
        changed_idx: list[int] = []
        for i, row, pos, role, text in hit.select("__i", "__row", "__pos", "role", "content").iter_rows():
            new, kinds = red.redact(text)
            if not kinds:
                continue
            found.update(kinds)
            kinds_here = ", ".join(sorted(set(kinds)))
            per_row.setdefault(row, []).append(f"turn {pos} ({role}): {kinds_here}")
            changed_idx.append(i)
            new_text.append(new)
        counters = {k: found.get(k, 0) for k in red.kinds}
        counters["turns_with_pii"] = len(changed_idx)
        counters["conversations_with_pii"] = len(per_row)
        if p.mode == "reject":
            detail = ["; ".join(per_row[r]) if r in per_row else None for r in range(table.height)]
            keep = [d is None for d in detail]
            score = [float(len(per_row.get(r, []))) for r in range(table.height)]
            return self.partition(table, keep, score, detail, counters)
        if changed_idx:
            content = long["content"].scatter(pl.Series(changed_idx, dtype=pl.UInt32),
                                              pl.Series(new_text, dtype=pl.String))
            long = long.with_columns(content.alias("content"))
            table = implode_messages(table, long.drop("__i", "__pos"))
        return OpResult(kept=table, counters=counters)
