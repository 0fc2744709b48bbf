"""The objective's metrics that Keras does not ship for integer labels: macro-F1 and balanced accuracy.

Both read one confusion matrix accumulated inside the compiled evaluation step (no second pass over
the validation set), and are computed as scikit-learn computes them: macro-F1 averages the per-class
F1 over the classes that occur in the labels or the predictions; balanced accuracy averages the
per-class recall over the classes that occur in the labels.
"""

from __future__ import annotations

import keras
from keras import ops

from search.trial._mixing import hard_labels


class _Confusion(keras.metrics.Metric):
    def __init__(self, num_classes: int, name: str, **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)
        self.matrix = self.add_variable(shape=(self.num_classes, self.num_classes), initializer="zeros",
                                        dtype="float32", name="confusion")

    def update_state(self, y_true, y_pred, sample_weight=None) -> None:
        k = self.num_classes
        truth = ops.one_hot(ops.cast(ops.reshape(hard_labels(y_true, y_pred), (-1,)), "int32"), k, dtype="float32")
        guess = ops.one_hot(ops.argmax(ops.reshape(y_pred, (-1, k)), axis=-1), k, dtype="float32")
        if sample_weight is not None:
            truth = truth * ops.reshape(ops.cast(sample_weight, "float32"), (-1, 1))
        self.matrix.assign_add(ops.matmul(ops.transpose(truth), guess))

    def reset_state(self) -> None:
        self.matrix.assign(ops.zeros((self.num_classes, self.num_classes), dtype="float32"))

    def get_config(self) -> dict:
        return {**super().get_config(), "num_classes": self.num_classes}

    def _counts(self):
        hits = ops.diagonal(self.matrix)
        return hits, ops.sum(self.matrix, axis=1), ops.sum(self.matrix, axis=0)  # true positives, labels, guesses


def _mean_where(values, present):
    present = ops.cast(present, "float32")
    return ops.sum(values * present) / ops.maximum(ops.sum(present), 1.0)


@keras.saving.register_keras_serializable(package="cnn_search")
class MacroF1(_Confusion):
    def __init__(self, num_classes: int, name: str = "macro_f1", **kwargs) -> None:
        super().__init__(num_classes, name=name, **kwargs)

    def result(self):
        hits, labels, guesses = self._counts()
        f1 = 2.0 * hits / ops.maximum(labels + guesses, 1e-12)
        return _mean_where(f1, (labels + guesses) > 0)


@keras.saving.register_keras_serializable(package="cnn_search")
class BalancedAccuracy(_Confusion):
    def __init__(self, num_classes: int, name: str = "balanced_accuracy", **kwargs) -> None:
        super().__init__(num_classes, name=name, **kwargs)

    def result(self):
        hits, labels, _ = self._counts()
        return _mean_where(hits / ops.maximum(labels, 1e-12), labels > 0)
