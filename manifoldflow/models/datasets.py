r"""Real datasets that scikit-learn ships with its package (no download): `digits`,
`breast_cancer` and `diabetes`, split at random into training and test sets, with
standardised features.

They need the `data` extra: `pip install -e ".[data]"` (scikit-learn).
"""

import dataclasses

import numpy as np

from .._errors import InputError


@dataclasses.dataclass(frozen=True)
class _Source:
    loader: str
    task: str  # "binary" (labels -1/+1) or "regression"
    labels: str  # how the labels are made, for the description


DATASETS = {
    "digits": _Source(
        "load_digits",
        "binary",
        "8x8 images of handwritten digits; label +1 for 5-9, -1 for 0-4",
    ),
    "breast_cancer": _Source(
        "load_breast_cancer",
        "binary",
        "30 features of breast masses; label +1 benign, -1 malignant",
    ),
    "diabetes": _Source(
        "load_diabetes",
        "regression",
        "10 baseline variables; label the disease progression after one year, "
        "standardised",
    ),
}
"""The datasets `load_dataset` knows, by name."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    r"""A training and a test set, as NumPy float64 arrays.

    **Fields:** `name`, `task` (`"binary"`: labels $\pm1$, the test error is the
    fraction of wrong signs; `"regression"`: the test error is the mean squared
    error), `X_train` `(n_train, features)`, `y_train` `(n_train,)`, `X_test`,
    `y_test`, `description` (where the labels come from), `size` (examples in the
    whole dataset).
    """

    name: str
    task: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    description: str
    size: int

    def test_error(self, predictions: np.ndarray) -> float:
        """The test error of `predictions` on `X_test`: the fraction of wrong signs
        (binary), or the mean squared error (regression)."""
        predictions = np.asarray(predictions)
        if self.task == "binary":
            return float(np.mean(np.sign(predictions) != self.y_test))
        return float(np.mean((predictions - self.y_test) ** 2))


def _sklearn_datasets():
    try:
        import sklearn.datasets
    except ImportError:
        raise InputError(
            "The real datasets need scikit-learn, which is not installed.",
            fix='Install the data extra: pip install -e ".[data]" (or pip install '
            "scikit-learn).",
            parameter="dataset",
        ) from None
    return sklearn.datasets


def load_dataset(
    name: str, n_train: int, n_test: int, seed: int = 0, *, standardise: bool = True
) -> Dataset:
    r"""`n_train` training and `n_test` test examples of the scikit-learn dataset
    `name` (one of `DATASETS`), drawn without replacement by a permutation with
    `seed`.

    Features are standardised with the training set's mean and standard deviation
    (features constant on the training set, e.g. always-blank pixels, become 0);
    the regression target likewise. Binary labels are $\pm 1$ (see `DATASETS`).

    Raises [`manifoldflow.InputError`][] for an unknown name, sizes below 1 or
    beyond the dataset, or without scikit-learn (the `data` extra).
    """
    if name not in DATASETS:
        raise InputError(
            f"Unknown dataset {name!r}: the datasets are {', '.join(sorted(DATASETS))}.",
            parameter="dataset",
        )
    for label, value in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise InputError(f"{label} must be an integer >= 1, got {value!r}.")
    source = DATASETS[name]
    bunch = getattr(_sklearn_datasets(), source.loader)()
    X = np.asarray(bunch.data, dtype=np.float64)
    target = np.asarray(bunch.target)
    size = X.shape[0]
    if n_train + n_test > size:
        raise InputError(
            f"{name} has {size} examples, fewer than n_train + n_test = {n_train} + "
            f"{n_test} = {n_train + n_test}.",
            fix=f"Ask for at most {size} examples in all.",
            parameter="n_train",
        )
    if name == "digits":
        y = np.where(target >= 5, 1.0, -1.0)
    elif name == "breast_cancer":
        y = np.where(target == 1, 1.0, -1.0)
    else:
        y = target.astype(np.float64)
    order = np.random.default_rng(seed).permutation(size)
    train, test = order[:n_train], order[n_train : n_train + n_test]
    X_train, X_test, y_train, y_test = X[train], X[test], y[train], y[test]
    if standardise:
        mean, scale = X_train.mean(axis=0), X_train.std(axis=0)
        scale = np.where(scale > 0, scale, 1.0)
        X_train, X_test = (X_train - mean) / scale, (X_test - mean) / scale
        if source.task == "regression":
            centre, spread = y_train.mean(), y_train.std()
            y_train, y_test = (y_train - centre) / spread, (y_test - centre) / spread
    return Dataset(
        name=name,
        task=source.task,
        X_train=X_train,
        y_train=y_train,
        X_test=X_test,
        y_test=y_test,
        description=source.labels,
        size=size,
    )
