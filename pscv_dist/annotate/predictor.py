"""The model's prediction of a whole case, for the overlay that shows the annotator where it is wrong.

From ``--checkpoint DIR`` (the model bundle :func:`~pscv_dist.model.bundle.load_model` reads) or
``--model-uri models:/NAME@ALIAS`` (the registered MLflow pyfunc segmenter, loaded as ``pscv
predict --model-uri`` loads it). A raw volume (a dataset folder) goes through
:func:`~pscv_dist.eval.predict.segment` (or the pyfunc's ``predict``, which calls it): the bundle's
normalisation, then the network at its training size, labels resized back, exactly ``pscv predict``.
A store's volumes are already normalised as training saw them, so they go to the network directly
(:func:`~pscv_dist.eval.inference.predict_volume`).

A case is predicted whole (the normalisation is per volume) on its first request, once; the
newest few are kept.
"""
from __future__ import annotations

import collections
import logging
import threading

import numpy as np

from ..errors import ConfigError, DataError

log = logging.getLogger(__name__)

PREDICTION_CACHE = 8


class Predictor:
    def __init__(self, classes: list[str], checkpoint: str | None = None, model_uri: str | None = None,
                 tracking_uri: str | None = None, normalization: str | None = None):
        if bool(checkpoint) == bool(model_uri):
            raise ConfigError("give exactly one of --checkpoint DIR or --model-uri models:/NAME@ALIAS")
        self._pyfunc = None
        if checkpoint:
            from ..model.bundle import load_model

            self.model, self.meta = load_model(checkpoint)
            self.describe = f"checkpoint {checkpoint}"
        else:
            from ..tracking import load_registered_model

            self._pyfunc = load_registered_model(model_uri, tracking_uri)
            inner = self._pyfunc.unwrap_python_model()
            self.model, self.meta = inner.model, inner.meta
            self.describe = f"model {model_uri}"
        model_classes = list(self.meta["classes"])
        if len(model_classes) != len(classes):
            raise DataError(f"{checkpoint or model_uri}: the model predicts {len(model_classes)} classes "
                            f"({', '.join(model_classes)}), the dataset has {len(classes)} ({', '.join(classes)}); "
                            f"give a model trained on this dataset's classes")
        if model_classes != list(classes):
            log.warning("the model's class names %s differ from the dataset's %s; overlaid by index",
                        model_classes, classes)
        mode = self.meta["normalization"].get("mode")
        if normalization is not None and mode != normalization:
            log.warning("the store was normalised with %r, the model was trained with %r", normalization, mode)
        self.classes = model_classes
        self._cache: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self._lock = threading.Lock()  # one prediction at a time (they use every core already)

    def _run(self, image: np.ndarray, normalised: bool) -> np.ndarray:
        import torch

        with torch.inference_mode():
            if normalised:
                from ..eval.inference import predict_volume

                return predict_volume(self.model, image, self.meta["size"])
            if self._pyfunc is not None:
                return np.asarray(self._pyfunc.predict(np.ascontiguousarray(image, dtype=np.float32)), dtype=np.uint8)
            from ..eval.predict import segment

            return segment(self.model, self.meta, image)

    def predict(self, case: str, image: np.ndarray, normalised: bool) -> np.ndarray:
        """uint8 (Z, H, W) labels of the case (cached)."""
        with self._lock:
            if case in self._cache:
                self._cache.move_to_end(case)
                return self._cache[case]
            labels = self._run(image, normalised)
            if labels.shape != image.shape:
                raise DataError(f"case {case}: the model returned labels of shape {labels.shape} for an image of "
                                f"{image.shape}")
            self._cache[case] = labels
            while len(self._cache) > PREDICTION_CACHE:
                self._cache.popitem(last=False)
            return labels
