"""Shared test set-up: quiet TensorFlow, deterministic seeds, small helpers."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _keras_seed():
    import keras

    keras.utils.set_random_seed(7)
    yield


@pytest.fixture(params=["keras", "auto"])
def layer_backend(request, monkeypatch):
    """Runs a frontend test twice: on the Keras reference, and on `backend="auto"`
    (the layers' default: the compiled CPU kernel at inference, the reference when
    training). For the "keras" run, layers built with the default backend get "keras"."""
    if request.param == "keras":
        import recurrentshop.recurrent_model as recurrent_model

        check = recurrent_model.check_backend_name
        monkeypatch.setattr(recurrent_model, "check_backend_name",
                            lambda backend: check("keras" if backend == "auto" else backend))
    return request.param


@pytest.fixture(scope="module")
def kernel_cache(tmp_path_factory):
    """A fresh kernel disk cache (RSHOP_CACHE_DIR) for one test module; its path."""
    previous = os.environ.get("RSHOP_CACHE_DIR")
    directory = str(tmp_path_factory.mktemp("kernel_cache"))
    os.environ["RSHOP_CACHE_DIR"] = directory
    yield directory
    if previous is None:
        os.environ.pop("RSHOP_CACHE_DIR", None)
    else:
        os.environ["RSHOP_CACHE_DIR"] = previous
