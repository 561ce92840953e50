"""The detector decoders; importing this package registers them (``service.vision.detection``).

- ``retinaface``: RetinaFace-layout anchor heads (boxes, scores, landmarks; the default
  ``retinaface-mnet025``).
- ``yunet``: OpenCV Zoo's YuNet (anchor-free: cls, obj, bbox and kps per stride).
- ``scrfd``: insightface's SCRFD (``det_10g.onnx`` and friends: distance-to-box and keypoints
  per stride, two anchors per cell).
"""

from service.vision.detectors import retinaface, scrfd, yunet

__all__ = ["retinaface", "scrfd", "yunet"]
