"""SynthPano: a tiny, deterministic synthetic panorama-captioning dataset in the QuIC-360 layout.

Each scene is an equirectangular (ERP) image with a plain sky/ground background and 1-3 coloured
shapes (circle / square / triangle, small or large). Objects on the horizon sit front / right /
behind / left; in about a quarter of the scenes one object is above (pitch +60..80 deg, any yaw),
one below (-60..-80) or, rarely, one of each. Shapes are drawn in spherical coordinates (gnomonic
projection around each object's centre), so they are distorted like real content, wrap around
the ERP seam and cover the poles with their correct shape. Objects never touch: their centres are
placed so that the caps bounding them keep a gap. Several differently-phrased reference captions
state every object's size, colour, shape and direction ("a large red circle in front"), and
question/answer pairs ask what is in each direction, how many objects there are, and each
object's colour and size.

Layout written under ``root``::

    images/<split>_<idx:05d>.png
    <split>.csv              columns url,query,annotation; one row per reference caption
    <split>_qa.csv           the same columns; one row per question (query) and its answer
    <split>_conversations.jsonl  caption and questions as chat turns, one line per image
    <split>_objects.jsonl    one line per image: {"url", "objects": [{shape, colour, size, ...}], "seam"}
    manifest.json            generator version, parameters, counts, sha256 of each CSV
"""
