"""Curation ops, one per module; :data:`REGISTRY` maps each recipe ``op`` name to its class."""

from __future__ import annotations

from realchat.curation.ops.base import Filter, OpParams
from realchat.curation.ops.clean_html import CleanHtml
from realchat.curation.ops.exact_dedup import ExactDedup
from realchat.curation.ops.fix_unicode import FixUnicode
from realchat.curation.ops.language import Language
from realchat.curation.ops.length import Length
from realchat.curation.ops.near_dedup import NearDedup
from realchat.curation.ops.quality import Quality
from realchat.curation.ops.redact_pii import RedactPii
from realchat.curation.ops.shape import Shape
from realchat.curation.ops.split import Split
from realchat.curation.ops.strip_chat_artifacts import StripChatArtifacts
from realchat.curation.ops.vendor_mention import VendorMention

REGISTRY: dict[str, type[Filter]] = {
    cls.Params.model_fields["op"].default: cls
    for cls in (
        CleanHtml,
        StripChatArtifacts,
        VendorMention,
        Shape,
        Language,
        Length,
        Quality,
        ExactDedup,
        NearDedup,
        Split,
        RedactPii,
        FixUnicode,
    )
}

__all__ = ["REGISTRY", "Filter", "OpParams"]
