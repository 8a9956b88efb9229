"""Panorama geometry and view generation (equirectangular -> perspective views)."""
