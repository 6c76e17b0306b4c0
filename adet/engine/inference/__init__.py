"""Inference: the predictor, batched prediction over files, test-time augmentation, sliced inference and the
prediction store."""
