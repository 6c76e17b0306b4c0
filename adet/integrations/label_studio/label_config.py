"""What a Label Studio project asks a pre-labeller for, read from its label config (XML):

    <View>
      <Image name="image" value="$image"/>
      <PolygonLabels name="label" toName="image">
        <Label value="Car" predicted_values="car, truck"/>
      </PolygonLabels>
    </View>

The first ``PolygonLabels`` or ``BrushLabels`` control on an ``Image`` is the one pre-labelled: its ``name`` is the
regions' ``from_name``, its ``toName`` their ``to_name``, the image's ``value`` (``$image``) the task data key of the
image's URL. A model class becomes the label whose ``value`` is its name or whose ``predicted_values`` lists it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field

from adet.errors import EmbedMaskError

REGION_TYPES = {"PolygonLabels": "polygonlabels", "BrushLabels": "brushlabels"}


class LabelConfigError(EmbedMaskError):
    """A label config the backend cannot pre-label (no polygon or brush control on an image, broken XML)."""


@dataclass
class RegionTarget:
    """Where the regions go: ``region_type`` (polygonlabels or brushlabels), ``from_name`` (the control),
    ``to_name`` (the image tag), ``data_key`` (the task data field holding the image URL) and ``label_of`` (model
    class name -> the project's label)."""

    region_type: str
    from_name: str
    to_name: str
    data_key: str
    label_of: dict[str, str] = field(default_factory=dict)

    def label(self, class_name: str) -> str | None:
        return self.label_of.get(class_name)


def region_target(label_config: str) -> RegionTarget:
    """The control to pre-label in ``label_config``; :class:`LabelConfigError` when there is none."""
    try:
        root = ElementTree.fromstring(label_config)
    except ElementTree.ParseError as e:
        raise LabelConfigError(f"label config: not valid XML ({e})") from None
    images = {tag.get("name"): tag.get("value", "") for tag in root.iter("Image")}
    for control in root.iter():
        if control.tag not in REGION_TYPES:
            continue
        to_name = control.get("toName", "")
        if to_name not in images:
            continue
        label_of: dict[str, str] = {}
        for label in control.iter("Label"):
            value = label.get("value", "")
            for name in [value, *(v.strip() for v in label.get("predicted_values", "").split(","))]:
                if name:
                    label_of.setdefault(name, value)
        return RegionTarget(REGION_TYPES[control.tag], control.get("name", ""), to_name,
                            images[to_name].lstrip("$"), label_of)
    raise LabelConfigError("label config: no <PolygonLabels> or <BrushLabels> on an <Image>; EmbedMask pre-labels "
                           "instance masks as polygons or brush strokes")
