"""Curation ops, one per module; :data:`REGISTRY` maps each recipe ``op`` name to its class."""

from __future__ import annotations

from realchat.filters.base import Filter, OpParams
from realchat.filters.clean_html import CleanHtml
from realchat.filters.exact_dedup import ExactDedup
from realchat.filters.language import Language
from realchat.filters.length import Length
from realchat.filters.near_dedup import NearDedup
from realchat.filters.quality import Quality
from realchat.filters.shape import Shape
from realchat.filters.split import Split
from realchat.filters.strip_chat_artifacts import StripChatArtifacts
from realchat.filters.vendor_mention import VendorMention

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
    )
}

__all__ = ["REGISTRY", "Filter", "OpParams"]
