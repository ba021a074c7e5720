"""Inputs: images and their preprocessing, data sets (manifests, boxes, labels), label files."""
