"""EmbedMask where people label data: a Label Studio ML backend (``embedmask label-studio``, needs the ``serve``
extra) and a CVAT auto-annotation function (``adet.integrations.cvat``, needs the ``cvat`` extra). Nothing here is
imported by ``import adet``."""
