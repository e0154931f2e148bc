"""Data layer: the ImageDataset abstraction, loaders, splits, small-data tools and ROI cropping."""

from .crops import crop_boxes
from .dataset import DataError, DataSplits, ImageDataset, concat, counts_str
from .roi import (apply_auto_crop, auto_crop_round_object, crop_box, load_boxes_csv, load_voc_boxes, make_roi_fn,
                  otsu_threshold, read_box_table, resize_square, select_roi_box)
from .sources import (MEDMNIST_CLASSES, convert_channels, load_csv, load_dataset, load_folder, load_medmnist,
                      medmnist_path, read_image, resize_dataset, select_classes)
from .splits import assert_disjoint, disjoint_subsets, make_imbalanced, per_class_subset, split_dataset

__all__ = [
    "DataError", "DataSplits", "ImageDataset", "concat", "counts_str",
    "apply_auto_crop", "auto_crop_round_object", "crop_box", "load_boxes_csv", "load_voc_boxes", "make_roi_fn",
    "otsu_threshold", "resize_square", "read_box_table", "select_roi_box", "crop_boxes",
    "MEDMNIST_CLASSES", "convert_channels", "load_csv", "load_dataset", "load_folder", "load_medmnist",
    "medmnist_path", "read_image", "resize_dataset", "select_classes",
    "assert_disjoint", "disjoint_subsets", "make_imbalanced", "per_class_subset", "split_dataset",
]
