"""Drawing: one colour per class in every image, labels placed clear of each other."""

import numpy as np

from adet.utils.visualizer import class_color, draw_instances, place_label


def test_colours_follow_the_class():
    colours = [class_color(k) for k in range(80)]
    assert len(set(colours)) == 80 and class_color(3) == colours[3]
    image = np.zeros((60, 120, 3), np.uint8)
    boxes = np.array([[5, 5, 30, 30], [70, 20, 110, 55], [40, 5, 60, 25]], float)
    drawn = draw_instances(image, boxes, np.array([2, 2, 5]), scores=np.array([0.9, 0.4, 0.8]))
    # The left edges of the two class-2 boxes have the same colour, the class-5 box another one (anti-aliased
    # lines: near the class colour).
    assert tuple(drawn[40, 70]) == tuple(drawn[20, 5])
    assert np.abs(drawn[40, 70].astype(int) - class_color(2)).max() < 30
    assert np.abs(drawn[20, 40].astype(int) - class_color(5)).max() < 30
    assert np.abs(drawn[20, 40].astype(int) - drawn[20, 5]).max() > 100


def test_labels_do_not_cover_each_other():
    taken = []
    for _ in range(6):  # six detections of one object: the same box
        taken.append(place_label((40, 40, 100, 90), (50, 12), (200, 200), taken))
    for i, a in enumerate(taken):
        assert 0 <= a[0] and a[2] <= 200 and 0 <= a[1] and a[3] <= 200
        for b in taken[i + 1:]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)
    assert taken[0] == (40, 28, 90, 40)  # the first goes just above its box
