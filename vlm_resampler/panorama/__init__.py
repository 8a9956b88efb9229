"""Panorama geometry and view generation (equirectangular -> views).

``e2p(equirect, fov_deg, yaw_deg, pitch_deg, out_hw)`` renders one perspective view (py360convert's
conventions: yaw + turns right, pitch + looks up); the view strategies are in :mod:`.views`.
"""

from vlm_resampler.panorama.geometry import e2p

__all__ = ["e2p"]
