"""View strategies: how an ERP panorama is cut into the views a vision encoder sees.

This module is the stable import path used by ``conf/view/*.yaml`` ``_target_``s (and saved in run
directories); each strategy lives in its own module:

=================  =========================  ==================================================
config             class                      views
=================  =========================  ==================================================
``resize``         :class:`ResizeView`        the whole ERP as one global view
``e2p``            :class:`HorizonViews`      N perspective views around the horizon
``cubemap``        :class:`CubemapViews`      6 cube faces (optionally widened to overlap)
``sliding_window`` :class:`SlidingWindowViews` N ERP tiles around the horizon, wrapping at the seam
``anyres_e2p``     :class:`AnyResViews`       a global view + perspective tiles in 1+ rows
=================  =========================  ==================================================
"""

from vlm_resampler.panorama.anyres import AnyResViews
from vlm_resampler.panorama.base import (
    TokenPairs,
    ViewMeta,
    ViewStrategy,
    mutual_token_pairs,
    token_centre_directions,
    view_lonlat,
    view_pixels,
    view_token_directions,
)
from vlm_resampler.panorama.cubemap import CubemapViews
from vlm_resampler.panorama.horizon import HorizonViews
from vlm_resampler.panorama.resize import ResizeView
from vlm_resampler.panorama.sliding_window import SlidingWindowViews

__all__ = [
    "AnyResViews",
    "CubemapViews",
    "HorizonViews",
    "ResizeView",
    "SlidingWindowViews",
    "TokenPairs",
    "ViewMeta",
    "ViewStrategy",
    "mutual_token_pairs",
    "token_centre_directions",
    "view_lonlat",
    "view_pixels",
    "view_token_directions",
]
