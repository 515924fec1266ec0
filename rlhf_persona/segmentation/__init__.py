"""Users → segments: profile + behaviour features, K-means with stable ids, segment cards.

from rlhf_persona.segmentation import Segmenter, user_table_from_store, fit_from_store
table = user_table_from_store(store)            # profiles + preference directions
seg = Segmenter(k=4).fit(table)                 # seg.cards_, seg.segment_ids_
segments, confidence = seg.assign(table)
fit_from_store(store, cfg.segmentation, run_id="round-1")   # writes assignments
"""

from rlhf_persona.segmentation.cards import SegmentCard, build_cards
from rlhf_persona.segmentation.data import (
    fit_from_store,
    segmenter_from_config,
    user_table_from_events,
    user_table_from_store,
)
from rlhf_persona.segmentation.features import UserFeaturizer, UserTable
from rlhf_persona.segmentation.segmenter import Segmenter

__all__ = [
    "SegmentCard",
    "Segmenter",
    "UserFeaturizer",
    "UserTable",
    "build_cards",
    "fit_from_store",
    "segmenter_from_config",
    "user_table_from_events",
    "user_table_from_store",
]
