"""gscnn_tf.metrics: the paper's evaluation metrics (docs/PAPER.md section 5).

* :mod:`.confusion`: confusion matrix, IoU, mIoU, category mIoU, accuracies, and the
  in-graph ``StreamingMeanIoU`` used as ``val_miou`` during training;
* :mod:`.boundary_f`: boundary F-score (official ``f_boundary.py`` / DAVIS definition);
* :mod:`.distance`: distance-based (vanishing-point crop) mIoU.
"""
from gscnn_tf.metrics.confusion import (  # noqa: F401
    StreamingMeanIoU,
    category_mean_iou,
    confusion_matrix,
    iou_per_class,
    mean_iou,
    pixel_accuracy,
)
